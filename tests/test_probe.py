"""The tuned probe: L2 chosen on held-out training images, flips averaged (no Keras)."""

import numpy as np
import pytest

from effscale.transfer.probe import Probe, fit_probe


def _blobs(n, d=20, classes=4, noise=1.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, (classes, d))
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.normal(0, noise, (n, d))).astype(np.float32), y


def test_probe_learns_separable_classes_and_scores_held_out_images():
    x, y = _blobs(600)
    probe = fit_probe(x[None], y, 4, l2_grid=(1e-1, 1e-3), seed=0)
    xt, yt = _blobs(300, seed=0)  # same centres (same seed), fresh noise below
    xt = xt + np.random.default_rng(9).normal(0, 0.1, xt.shape).astype(np.float32)
    assert (probe.predict_proba(xt).argmax(1) == yt).mean() > 0.95
    assert set(probe.holdout) == {1e-1, 1e-3} and all(0.9 < a <= 1 for a in probe.holdout.values())


def test_penalty_shrinks_the_weights():
    x, y = _blobs(300)
    weak = fit_probe(x[None], y, 4, l2_grid=(1e-5,))
    strong = fit_probe(x[None], y, 4, l2_grid=(1.0,))
    assert np.linalg.norm(strong.kernel) < 0.5 * np.linalg.norm(weak.kernel)
    assert weak.holdout == {} and strong.l2 == 1.0  # one value: nothing to tune, no hold-out


def test_kernel_works_on_raw_features_although_the_fit_standardises():
    x, y = _blobs(400)
    x = x * 1000 + 50  # a feature scale far from 1
    probe = fit_probe(x[None], y, 4, l2_grid=(1e-3,))
    assert (probe.predict_proba(x).argmax(1) == y).mean() > 0.95


def test_views_are_averaged_at_test_time():
    probe = Probe(np.array([[1.0, -1.0]], np.float32), np.zeros(2, np.float32), 0.0)
    a = np.array([[[3.0]]], np.float32)  # view 1: class 0 strongly
    b = np.array([[[-1.0]]], np.float32)  # view 2: class 1 mildly
    both = probe.predict_proba(np.concatenate([a, b]))
    mean = (probe.predict_proba(a) + probe.predict_proba(b)) / 2
    np.testing.assert_allclose(both, mean)
    assert both.argmax() == 0


def test_held_out_images_leave_with_all_their_views():
    # Flip views identical to their image: if a held-out image's flip stayed in the fit,
    # random labels would be "predicted" perfectly on the hold-out by memorisation.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 200)).astype(np.float32)
    y = rng.integers(0, 5, 300)
    probe = fit_probe(np.stack([x, x]), y, 5, l2_grid=(1e-5, 1e-4), seed=3)
    assert max(probe.holdout.values()) < 0.5


def test_sweep_stops_after_two_values_below_the_best():
    from effscale.transfer.probe import sweep_done

    assert not sweep_done([0.81, 0.83])
    assert not sweep_done([0.81, 0.83, 0.835, 0.829])  # one value below the best so far
    assert sweep_done([0.81, 0.83, 0.835, 0.829, 0.82])
    assert not sweep_done([0.81, 0.83, 0.835, 0.829, 0.835])  # a tie with the best is not below
    assert sweep_done([0.9, 0.5, 0.5])


def test_sweep_stops_early_and_refit_warm_starts():
    """A strong penalty is best on these blobs with wrong-label noise; the weak ones after it
    are not fitted once two in a row score below it."""
    rng = np.random.default_rng(3)
    x, y = _blobs(400, d=60, noise=3.0, seed=3)
    flip = rng.random(len(y)) < 0.3
    y = np.where(flip, rng.integers(0, 4, len(y)), y)
    lines = []
    grid = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    probe = fit_probe(x[None], y, 4, l2_grid=grid, log=lines.append)
    tried = list(probe.holdout)
    grid_tried = [l2 for l2 in tried if l2 <= grid[0]]  # the sweep may look past 1.0 if it wins
    assert tried[: len(grid_tried)] == list(grid[: len(grid_tried)]) and len(tried) == len(lines)
    tried = grid_tried
    assert len(tried) < len(grid), probe.holdout  # this noisy problem peaks early
    best = max(probe.holdout.values())
    assert all(a < best for a in list(probe.holdout.values())[-2:])  # the two after the best lost
    assert probe.l2 == max(probe.holdout, key=lambda k: (probe.holdout[k], k))


def test_the_sweep_looks_past_the_strongest_value_only_while_it_wins():
    from effscale.transfer.probe import stronger_l2

    half_decade = 10**-0.5
    assert stronger_l2({0.1: 0.80, 0.03: 0.79, 0.01: 0.78}) == pytest.approx(half_decade, rel=1e-12)
    assert stronger_l2({0.1: 0.80, 0.03: 0.80}) is None  # a tie: the peak is flat here
    assert stronger_l2({0.1: 0.78, 0.03: 0.80}) is None  # the peak is inside the grid
    assert stronger_l2({half_decade: 0.81, 0.1: 0.80}) == 1.0
    assert stronger_l2({half_decade: 0.79, 0.1: 0.80}) is None  # went past the peak: stop
    assert stronger_l2({10.0: 0.9, 10**0.5: 0.8}) is None  # the cap: a head that barely moves
    assert stronger_l2({0.1: 0.8}) is None  # one value: nothing to compare


def test_a_grid_of_weak_penalties_is_extended_to_the_peak():
    """Noisy labels want a strong penalty (about 0.1 here, from a sweep over 1..1e-4); a grid
    of weak ones starts below it and the sweep climbs past its strongest value to find it."""
    rng = np.random.default_rng(4)
    x, y = _blobs(1000, d=60, noise=3.0, seed=4)
    flip = rng.random(len(y)) < 0.3
    y = np.where(flip, rng.integers(0, 4, len(y)), y)
    lines = []
    probe = fit_probe(x[None], y, 4, l2_grid=(1e-2, 1e-3), log=lines.append)
    assert max(probe.holdout) >= 0.1, probe.holdout  # it looked past the grid
    assert sum("past the grid's strongest" in line for line in lines) == len(probe.holdout) - 2
    grid_best = max(probe.holdout[1e-2], probe.holdout[1e-3])
    assert probe.holdout[probe.l2] >= grid_best + 0.03 and probe.l2 >= 0.1
    strongest = max(probe.holdout)  # the last one tried did not beat the others
    assert probe.holdout[strongest] <= max(v for k, v in probe.holdout.items() if k != strongest)


def test_signed_sqrt_keeps_the_sign_and_leaves_its_input_alone():
    from effscale.transfer.probe import signed_sqrt

    x = np.array([[4.0, -9.0, 0.0, 2.25]], np.float32)
    np.testing.assert_array_equal(signed_sqrt(x), [[2.0, -3.0, 0.0, 1.5]])
    np.testing.assert_array_equal(x, [[4.0, -9.0, 0.0, 2.25]])


def test_the_refit_reaches_the_tight_optimum_whatever_the_sweeps_looser_stop():
    """The sweep's fits stop early (SWEEP_FTOL, to rank strengths); the final refit does not,
    so the kernel it returns is a cold tight fit's at the chosen strength."""
    from effscale.transfer.probe import MAX_ITER, SWEEP_FTOL, _fit

    rng = np.random.default_rng(5)
    x, y = _blobs(1500, d=80, noise=4.0, seed=5)
    y = np.where(rng.random(len(y)) < 0.2, rng.integers(0, 4, len(y)), y)
    scaled = (x - x.mean(0)) / (x.std(0) + 1e-6)
    _, loose_loss, loose_steps = _fit(scaled, y, 4, 1e-4, None, MAX_ITER, SWEEP_FTOL)
    tight, tight_loss, tight_steps = _fit(scaled, y, 4, 1e-4, None, MAX_ITER)
    assert loose_steps < tight_steps and 0 <= loose_loss - tight_loss < 1e-3 * tight_loss

    probe = fit_probe(x[None], y, 4, l2_grid=(1e-2, 1e-3, 1e-4), seed=0)
    cold, _, _ = _fit(scaled, y, 4, probe.l2, None, MAX_ITER)
    std = x.std(0) + 1e-6
    kernel = cold[: 80 * 4].reshape(80, 4) / std[:, None]
    np.testing.assert_allclose(probe.kernel, kernel, atol=2e-3 * np.abs(kernel).max())
