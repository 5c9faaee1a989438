"""lmvision's Hydra plugins (found by Hydra in the ``hydra_plugins`` namespace)."""
