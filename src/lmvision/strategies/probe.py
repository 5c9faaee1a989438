"""Linear probes: logistic regression on frozen features, one per layer, with controls.

The probe of each layer learns on the training split; the layer is chosen by validation
accuracy, and its test accuracy is reported (choosing on test would flatter the probe).
"""

from __future__ import annotations

import torch


def probe_accuracies(features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]
                     ) -> tuple[float, float]:
    """Validation and test accuracy of a logistic-regression probe (standardised features)
    fitted on ``features["train"]`` (N, D)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    probe.fit(features["train"].double().numpy(), labels["train"].numpy())
    return tuple(float(probe.score(features[s].double().numpy(), labels[s].numpy()))
                 for s in ("val", "test"))


def best_layer(stacks: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]
               ) -> tuple[int, list[float]]:
    """Probe every layer of ``stacks[split]`` (layers, N, D): the index chosen on validation
    and every layer's test accuracy."""
    scores = [probe_accuracies({s: stacks[s][i] for s in stacks}, labels)
              for i in range(len(stacks["train"]))]
    chosen = max(range(len(scores)), key=lambda i: scores[i][0])
    return chosen, [test for _, test in scores]


def fit_probes(merged: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """``probe/*`` metrics from the features of the trained model, of the same architecture
    with random weights, and of raw pixels (``merged[split][kind]``: (layers, N, D))."""
    labels = {s: merged[s]["labels"] for s in merged}
    out: dict[str, float] = {}
    chosen, tests = best_layer({s: merged[s]["trained"] for s in merged}, labels)
    for i, acc in enumerate(tests):
        out[f"probe/acc_layer_{i + 1}"] = acc
    out["probe/best_layer"] = float(chosen + 1)
    out["probe/acc_best"] = tests[chosen]
    chosen_random, tests_random = best_layer({s: merged[s]["random"] for s in merged}, labels)
    out["probe/acc_random_init"] = tests_random[chosen_random]
    out["probe/acc_pixels"] = best_layer({s: merged[s]["pixels"] for s in merged}, labels)[1][0]
    return out
