"""Linear probes: logistic regression on frozen features, one per layer, with controls.

Each probe sweeps its L2 regularisation strength (as CLIP's and iGPT's probes do). The strength
and the layer are chosen by cross-validation over the training and validation items together
(stratified folds: less noisy than one small validation split), the chosen probe is refitted
on all of them, and its test accuracy is reported (choosing on test would flatter the probe).
The controls (random weights, raw pixels) get the same protocol. Besides one probe per layer,
one probe reads every layer's features side by side, as iGPT's best ImageNet probe did.
"""

from __future__ import annotations

import numpy as np
import torch


INVERSE_REGULARISATION = (0.01, 0.1, 1.0, 10.0, 100.0)  # logistic regression's C, swept
FOLDS = 3
FOLD_SEED = 0
JOBS = -1  # fits run side by side, one per core (1: one after another)
# ... when train and val hold at least this many items. Smaller fits are mostly the solver's
# Python overhead, which holds the GIL: side by side they only add thread switching
# (experiments/probe_speed/README.md: 255 items 5.8 s one after another, 10.2 s side by side;
# 510 items 9.6 s and 14.3 s; 850 items 19.4 s and 17.5 s, on 2 cores)
PARALLEL_MIN_ITEMS = 800


def folds(train_labels: np.ndarray, val_labels: np.ndarray, k: int = FOLDS
          ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (fit, score) over the training then validation items: ``k`` stratified
    folds, or the given train/validation split when a class has fewer than ``k`` items (a
    run that tests a few batches)."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.concatenate([train_labels, val_labels])
    if np.unique(labels, return_counts=True)[1].min() >= k:
        return list(StratifiedKFold(k, shuffle=True, random_state=FOLD_SEED).split(labels, labels))
    return [(np.arange(len(train_labels)), np.arange(len(train_labels), len(labels)))]


def _fit_modules():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return LogisticRegression, make_pipeline, StandardScaler


def _fit(x: np.ndarray, y: np.ndarray, c: float):
    logistic_regression, make_pipeline, standard_scaler = _fit_modules()
    return make_pipeline(standard_scaler(), logistic_regression(max_iter=2000, C=c)).fit(x, y)


def probe_accuracies(features: dict[str, torch.Tensor], labels: dict[str, torch.Tensor],
                     strengths: tuple[float, ...] = INVERSE_REGULARISATION
                     ) -> tuple[float, float]:
    """Cross-validated and test accuracy of a logistic-regression probe on standardised
    ``features[split]`` (N, D): the ``C`` of ``strengths`` with the best mean accuracy over
    the folds of train and val, refitted on train and val."""
    from sklearn.utils.parallel import Parallel, delayed
    from threadpoolctl import threadpool_limits

    x = np.concatenate([features[s].double().numpy() for s in ("train", "val")])
    y = np.concatenate([labels[s].numpy() for s in ("train", "val")])
    pairs = folds(labels["train"].numpy(), labels["val"].numpy())

    def held_out(c: float, fit: np.ndarray, held: np.ndarray) -> float:
        # OpenMP's limit holds per thread: each sets its own. BLAS's is global, set once by
        # fit_probes: a thread that restored it on leaving would undo it for the others
        with threadpool_limits(limits=1, user_api="openmp"):
            return _fit(x[fit], y[fit], c).score(x[held], y[held])

    runs = [(c, fit, held) for c in strengths for fit, held in pairs]
    # threads: the solver's products release the GIL for part of each fit, and threads need no
    # copies of the features (experiments/probe_speed measures what they gain)
    jobs = JOBS if len(y) >= PARALLEL_MIN_ITEMS else 1
    accuracy = Parallel(n_jobs=jobs, prefer="threads")(delayed(held_out)(*run) for run in runs)
    means = np.reshape(accuracy, (len(strengths), len(pairs))).mean(1)  # runs are C-major
    scores = dict(zip(strengths, means.tolist()))
    chosen = max(strengths, key=scores.get)
    test = _fit(x, y, chosen).score(features["test"].double().numpy(), labels["test"].numpy())
    return scores[chosen], float(test)


def best_layer(stacks: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]
               ) -> tuple[int, list[float], float]:
    """Probe every layer of ``stacks[split]`` (layers, N, D): the index chosen by
    cross-validation, every layer's test accuracy, and the chosen layer's cross-validated
    accuracy (a figure that compares runs without reading the test split)."""
    scores = [probe_accuracies({s: stacks[s][i] for s in stacks}, labels)
              for i in range(len(stacks["train"]))]
    chosen = max(range(len(scores)), key=lambda i: scores[i][0])
    return chosen, [test for _, test in scores], scores[chosen][0]


def all_layers(stacks: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> float:
    """Test accuracy of one probe of every layer's features side by side (N, layers * D)."""
    side_by_side = {s: stack.permute(1, 0, 2).flatten(1) for s, stack in stacks.items()}
    return probe_accuracies(side_by_side, labels)[1]


def fit_probes(merged: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """``probe/*`` metrics from the features of the trained model, of the same architecture
    with random weights, and of raw pixels (``merged[split][kind]``: (layers, N, D)).

    Each fit runs on one thread (side by side, one per core, from ``PARALLEL_MIN_ITEMS``
    items): they are many small matrix products, and in a process that has trained with
    PyTorch, the threads of its OpenMP pool and those of scikit-learn's and SciPy's own OpenMP
    and BLAS libraries would fight over the cores (16 times as long for a digits-sized run on
    2 cores: ``experiments/probe_speed``)."""
    from threadpoolctl import threadpool_limits

    _fit_modules()  # their BLAS and OpenMP libraries loaded first, so that the limit covers them
    with threadpool_limits(limits=1):
        return _fit_probes(merged)


def _fit_probes(merged: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    labels = {s: merged[s]["labels"] for s in merged}
    trained = {s: merged[s]["trained"] for s in merged}
    random = {s: merged[s]["random"] for s in merged}
    out: dict[str, float] = {}
    chosen, tests, out["probe/cv_acc_best"] = best_layer(trained, labels)
    for i, acc in enumerate(tests):
        out[f"probe/acc_layer_{i + 1}"] = acc
    out["probe/best_layer"] = float(chosen + 1)
    out["probe/acc_best"] = tests[chosen]
    chosen_random, tests_random, out["probe/cv_acc_random_init"] = best_layer(random, labels)
    out["probe/acc_random_init"] = tests_random[chosen_random]
    out["probe/acc_all_layers"] = all_layers(trained, labels)
    out["probe/acc_random_init_all_layers"] = all_layers(random, labels)
    _, (out["probe/acc_pixels"],), out["probe/cv_acc_pixels"] = best_layer(
        {s: merged[s]["pixels"] for s in merged}, labels)
    return out
