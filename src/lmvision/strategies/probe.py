"""Linear probes: logistic regression on frozen features, one per layer, with controls.

The probe of each layer learns on the training split; its L2 regularisation strength and
the layer are chosen by validation accuracy (as CLIP's and iGPT's probes sweep theirs), and
the test accuracy of that choice is reported (choosing on test would flatter the probe). The
controls (random weights, raw pixels) get the same sweep.
"""

from __future__ import annotations

import torch


INVERSE_REGULARISATION = (0.01, 0.1, 1.0, 10.0, 100.0)  # logistic regression's C, swept


def probe_accuracies(features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                     strengths: tuple[float, ...] = INVERSE_REGULARISATION
                     ) -> tuple[float, float]:
    """Validation and test accuracy of a logistic-regression probe (standardised features)
    fitted on ``features["train"]`` (N, D), with the ``C`` of ``strengths`` that is best on
    validation."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features["train"].double().numpy())
    x = {s: scaler.transform(features[s].double().numpy()) for s in features}
    y = {s: labels[s].numpy() for s in labels}
    best = None
    for c in strengths:
        probe = LogisticRegression(max_iter=2000, C=c).fit(x["train"], y["train"])
        scores = tuple(float(probe.score(x[s], y[s])) for s in ("val", "test"))
        if best is None or scores[0] > best[0]:
            best = scores
    return best


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
