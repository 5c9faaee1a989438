"""lmvision: how much do language models help image recognition?

Importing the package is cheap on purpose (no torch, no Lightning): the Hydra entry points
answer `--help` and `--cfg job` without paying for the deep-learning stack.
"""

__version__ = "0.1.0"
