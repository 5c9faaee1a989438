"""Evaluation beyond a strategy's loss: metrics, figures, probes, faithfulness, saliency, sample grids."""
