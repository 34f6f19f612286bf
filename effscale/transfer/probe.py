"""The tuned linear probe: multinomial logistic regression on cached features, L-BFGS.

A linear head on frozen features is a convex problem, so it is solved to convergence with
L-BFGS (scipy) instead of being trained for a guessed number of SGD epochs. What remains
to choose is the L2 strength; it is picked on a held-out slice of the *training* images
(the validation set is never looked at), then the head is refitted on every training
image with that strength. Flip views enter training as extra rows and are averaged
(softmax probabilities) at test time. No Keras here: plain numpy + scipy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math
from dataclasses import dataclass, field

import numpy as np

# L2 strengths tried, strongest first (each fit warm-starts from the previous one). The
# penalty is lambda/2 * ||W||^2 added to the *mean* cross-entropy over rows of standardised
# features, so the values do not depend on the number of images; 1e-5..1e-1 spans
# "almost unregularised" to "the head barely moves from uniform".
L2_GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)
HOLDOUT = 0.1
MAX_ITER = 300
# The sweep only ranks strengths, so its fits stop at a looser relative loss decrease than
# the refit's (scipy's default, 2.2e-9). Measured on Lite0's and Lite2's 160-px CIFAR-10
# features and Lite0's Imagenette ones: 0.55x, 0.53x and 0.63x of the tight sweep's time,
# the same L2 chosen, held-out top-1 within three images; 1e-5 was faster but moved a
# held-out score by two images and chose another L2 on Imagenette (docs/transfer.md).
SWEEP_FTOL = 1e-6
# Held-out top-1 over this grid rises to one peak and falls (measured on Lite0 features of
# CIFAR-10: 81.9, 82.9, 83.5, 82.9 ... %); the weaker penalties after the peak also take the
# most L-BFGS steps, so the sweep stops once PATIENCE values in a row score below the best.
PATIENCE = 2
# When the strongest penalty of the grid scores best, the peak may lie beyond it (few
# images, many features): the sweep goes on upwards by half a decade, up to this.
MAX_L2 = 10.0


def stronger_l2(scores: dict[float, float], max_l2: float = MAX_L2) -> float | None:
    """The next, stronger L2 to try, or None once the peak is inside the values tried.

    ``scores`` maps each strength tried to its held-out top-1. The sweep extends only while
    the strongest value tried beats every other (a tie says the peak is flat there: stop);
    the steps are the half decades 10^(k/2).
    """
    strongest = max(scores)
    others = [score for l2, score in scores.items() if l2 != strongest]
    if not others or scores[strongest] <= max(others):
        return None
    nxt = 10 ** ((round(2 * math.log10(strongest)) + 1) / 2)
    return nxt if nxt <= max_l2 * (1 + 1e-9) else None


@dataclass
class Probe:
    """A fitted head: ``softmax(features @ kernel + bias)`` on raw (unstandardised) features."""

    kernel: np.ndarray  # (features, classes)
    bias: np.ndarray  # (classes,)
    l2: float
    holdout: dict = field(default_factory=dict)  # l2 -> held-out top-1 (flip-averaged)
    iterations: int = 0
    train_loss: float = float("nan")

    def predict_proba(self, views: np.ndarray) -> np.ndarray:
        """Mean softmax over views; ``views`` is (views, images, features) or (images, features)."""
        views = np.asarray(views)
        if views.ndim == 2:
            views = views[None]
        probs = np.zeros((views.shape[1], self.kernel.shape[1]), dtype=np.float64)
        for view in views:
            probs += _softmax(view.astype(np.float32) @ self.kernel + self.bias)
        return probs / len(views)


def signed_sqrt(x: np.ndarray) -> np.ndarray:
    """sign(x) * sqrt(|x|), elementwise: the power normalisation that
    ``TransferConfig.probe_features="sqrt"`` applies before the fit; the model applies the same
    in its graph (``effscale.transfer.model.head_features``). One new array, ``x`` untouched."""
    out = np.abs(x)
    np.sqrt(out, out=out)
    return np.copysign(out, x, out=out)


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    return logits / logits.sum(axis=1, keepdims=True)


def _fit(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, start: np.ndarray | None,
         max_iter: int, ftol: float | None = None) -> tuple[np.ndarray, float, int]:
    """Minimise mean cross-entropy + l2/2 * ||W||^2 (bias unpenalised) on standardised ``x``."""
    from scipy.optimize import minimize

    n, d = x.shape
    onehot = np.zeros((n, num_classes), dtype=np.float32)
    onehot[np.arange(n), y] = 1.0

    def loss_and_grad(theta):
        w = theta[: d * num_classes].reshape(d, num_classes).astype(np.float32)
        b = theta[d * num_classes:].astype(np.float32)
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        logsum = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        logp = logits - logsum
        loss = -float((onehot * logp).sum(dtype=np.float64)) / n + 0.5 * l2 * float((w.astype(np.float64) ** 2).sum())
        delta = (np.exp(logp) - onehot) / n
        grad_w = x.T @ delta + l2 * w
        grad_b = delta.sum(axis=0)
        return loss, np.concatenate([grad_w.ravel(), grad_b]).astype(np.float64)

    theta0 = np.zeros(d * num_classes + num_classes) if start is None else start
    options = {"maxiter": max_iter, "gtol": 1e-6} | ({} if ftol is None else {"ftol": ftol})
    result = minimize(loss_and_grad, theta0, jac=True, method="L-BFGS-B", options=options)
    return result.x, float(result.fun), int(result.nit)


def sweep_done(scores: Sequence[float], patience: int = PATIENCE) -> bool:
    """True once the last ``patience`` scores (in grid order) are all below the best before them."""
    if len(scores) <= patience:
        return False
    best_before = max(scores[:-patience])
    return all(score < best_before for score in scores[-patience:])


def _rows(views: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.concatenate([v[idx] for v in views]).astype(np.float32)


def fit_probe(views: np.ndarray, labels: np.ndarray, num_classes: int, *, l2_grid: Sequence[float] = L2_GRID,
              holdout: float = HOLDOUT, seed: int = 0, max_iter: int = MAX_ITER,
              sweep_ftol: float | None = SWEEP_FTOL, log: Callable[[str], None] | None = None) -> Probe:
    """Tune L2 on a held-out slice of the training images, then refit on all of them.

    ``views``: (views, images, features) training features (e.g. image and flip);
    ``labels``: (images,) int class ids. Held-out images are left out with all their views,
    and scored with the flip-averaged probabilities, exactly as the final model is scored.
    ``sweep_ftol``: where the sweep's fits stop (None: as tight as the refit's).
    """
    views = np.asarray(views)
    if views.ndim == 2:
        views = views[None]
    labels = np.asarray(labels, dtype=np.int64)
    num_views, n, d = views.shape
    # Standardise with the training statistics: L-BFGS converges in far fewer steps on
    # unit-scale inputs, and one L2 grid then fits any backbone's feature scale.
    mean = views.reshape(-1, d).mean(axis=0, dtype=np.float64).astype(np.float32)
    std = views.reshape(-1, d).std(axis=0, dtype=np.float64).astype(np.float32) + 1e-6
    scaled = (views.astype(np.float32) - mean) / std

    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_hold = int(round(n * holdout)) if len(l2_grid) > 1 else 0
    hold, fit_idx = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    scores: dict[float, float] = {}
    best_l2, start, best_start = float(l2_grid[0]), None, None
    if n_hold:
        x_fit = _rows(scaled, fit_idx)
        y_fit = np.tile(labels[fit_idx], num_views)

        def held_out(theta: np.ndarray, l2: float) -> float:
            """Flip-averaged top-1 on the held-out images, scored as the final model is."""
            w, b = theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
            probe = Probe(w.astype(np.float32), b.astype(np.float32), l2)
            return float((probe.predict_proba(scaled[:, hold]).argmax(axis=1) == labels[hold]).mean())

        for l2 in l2_grid:
            start, _, nit = _fit(x_fit, y_fit, num_classes, float(l2), start, max_iter, sweep_ftol)
            acc = held_out(start, float(l2))
            if not scores or acc > max(scores.values()):
                best_start = start
            scores[float(l2)] = acc
            if log is not None:
                log(f"probe l2={l2:g}: held-out top-1 {100 * acc:.2f}% ({nit} L-BFGS steps)")
            if sweep_done(list(scores.values())):
                break
        # The best was the strongest penalty of the grid: look past it (cold starts, as the
        # stronger fits are near the uniform head anyway).
        while (l2 := stronger_l2(scores)) is not None:
            fitted, _, nit = _fit(x_fit, y_fit, num_classes, l2, None, max_iter, sweep_ftol)
            acc = held_out(fitted, l2)
            if acc >= max(scores.values()):
                best_start = fitted
            scores[l2] = acc
            if log is not None:
                log(f"probe l2={l2:g}: held-out top-1 {100 * acc:.2f}% ({nit} L-BFGS steps; "
                    "past the grid's strongest)")
        # Ties go to the stronger penalty (first in the grid): the smoother head.
        best_l2 = max(scores, key=lambda k: (scores[k], k))
        del x_fit
    x_all = _rows(scaled, np.arange(n))
    y_all = np.tile(labels, num_views)
    # The refit starts from the chosen strength's held-out fit (same standardisation), a
    # near neighbour of the answer, so it needs a fraction of a cold start's steps.
    theta, loss, nit = _fit(x_all, y_all, num_classes, best_l2, best_start, max_iter)
    w = theta[: d * num_classes].reshape(d, num_classes) / std[:, None]
    b = theta[d * num_classes:] - mean @ w
    return Probe(w.astype(np.float32), b.astype(np.float32), best_l2, holdout=scores, iterations=nit,
                 train_loss=loss)
