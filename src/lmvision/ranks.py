"""Which process this is among a job's processes, known before torch.distributed starts."""

from __future__ import annotations

import os

# What launchers (Lightning, torchrun, SLURM, jsrun) set to tell a process where it runs.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID",
                  "JSM_NAMESPACE_RANK")


def is_rank_zero() -> bool:
    """Whether this is the process of global rank 0 (or the only one), from the variables
    launchers set, so it is known before torch.distributed starts (and without torch)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)
