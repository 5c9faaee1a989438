"""The cached step of :class:`~lmvision.nn.pixel_gpt.PixelGPT`'s sampling, replayed as a CUDA
graph on a GPU.

On a CUDA device the step (``PixelGPT.step``) writes its keys and values at its position and
attends to the whole cache, the slots after its position masked: its shapes never change, so it
is captured once as a CUDA graph and replayed per token, and the graph is kept for later calls
of the same batch size (per model, in :data:`_GRAPHS`, when its cache takes at most
:data:`KEEP_GRAPH_BYTES`).
"""

from __future__ import annotations

import warnings
import weakref

import torch

from lmvision.nn.pixel_cache import KVCache

# per model, the CUDA graph of its cached step and the cache it writes, kept between calls
# when the cache takes at most KEEP_GRAPH_BYTES (a large one is freed after its call)
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
KEEP_GRAPH_BYTES = 256 * 2**20


def stepper(model, rows: int, device: torch.device, compiled: bool = False):
    """``(token, position) -> logits`` and the cache it fills (whose slots before
    ``position`` the caller writes, e.g. by :meth:`PixelGPT.forward` with the cache).

    On a CUDA device: :meth:`PixelGPT.step` replayed as a CUDA graph, which then also moves its
    position on by one. The graph and its cache are kept for the next call with the same
    rows, device and parameters, if its cache takes at most ``KEEP_GRAPH_BYTES``
    (capturing costs milliseconds: two warm-up steps, the capture, the graph's
    instantiation). Its cache is zeroed for each call: slots after the position are masked,
    but an infinite or NaN key or value that an earlier call left there would still reach
    the output (through the additive mask, and as a zero weight times it). Elsewhere, in
    training mode, or when capture fails: :meth:`PixelGPT.forward` on the one token with a new
    cache. ``compiled``: the step goes through ``torch.compile`` (graphed on a GPU, called
    as it is elsewhere)."""
    def new_cache() -> KVCache:
        return KVCache(model.depth, rows, model.heads, model.max_length, model.dim // model.heads,
                       device, model.position.dtype)

    graphed = device.type == "cuda" and not model.training
    key = (rows, str(device), model.position.dtype, tuple(p.data_ptr() for p in model.parameters()))
    held = _GRAPHS.get(model, {}).get(compiled)
    if graphed and held is not None and held[0] == key:
        for pair in held[2].pairs:
            pair.zero_()
        return held[1], held[2]
    _GRAPHS.get(model, {}).pop(compiled, None)  # an earlier graph and cache are freed first
    cache = new_cache()
    token = torch.zeros(rows, dtype=torch.long, device=device)
    position = torch.zeros(1, dtype=torch.long, device=device)
    step = torch.compile(model.step, fullgraph=True, dynamic=False) if compiled else model.step

    def eager(new: torch.Tensor, at: int) -> torch.Tensor:  # the slots up to ``at`` alone
        if compiled:  # the fixed-shape step: one compiled program for every position
            position.fill_(at)
            return step(new, position, cache)
        return model(new.unsqueeze(1), cache, at)[:, -1]

    if not graphed:
        return eager, cache
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    # full precision: autocast's weight cache must not be captured (the graph is replayed
    # whatever autocast says when it is). thread_local: a loader's pin-memory thread may
    # allocate while this thread captures.
    try:
        with torch.autocast("cuda", enabled=False):
            with torch.cuda.stream(stream):  # warm-up (lazy initialisation) outside the capture
                for _ in range(2):
                    step(token, position, cache)
            torch.cuda.current_stream(device).wait_stream(stream)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                logits = step(token, position, cache)
                position.add_(1)  # where the next replay writes, unless told otherwise
    except RuntimeError as err:  # an optimisation only: sample step by step instead
        warnings.warn(f"PixelGPT: sampling without a CUDA graph ({err})", stacklevel=3)
        return eager, cache
    at_next = [-1]  # the position the graph holds after the last replay

    def replay(new: torch.Tensor, at: int) -> torch.Tensor:
        token.copy_(new)
        if at != at_next[0]:
            position.fill_(at)
        graph.replay()
        at_next[0] = at + 1
        return logits  # overwritten by the next replay: read it before

    size = sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values))
    if size <= KEEP_GRAPH_BYTES:  # nothing kept refers to the model, which can still be freed
        _GRAPHS.setdefault(model, {})[compiled] = (key, replay, cache)
    return replay, cache



def cuda_graph_replay(model, compiled: bool = False):
    """The CUDA graph of ``model``'s cached step that :meth:`PixelGPT.generate` kept (of its
    compiled step with ``compiled``), as ``replay(token, at) -> logits``: one step for the
    (rows,) ``token`` at position ``at``; the logits are overwritten by the next replay. Raises
    KeyError when none is kept (no GPU, not sampled yet, capture failed, or a large cache)."""
    held = _GRAPHS.get(model, {}).get(compiled)
    if held is None:
        raise KeyError(f"no CUDA graph kept for this model's {'compiled ' * compiled}step")
    return held[1]
