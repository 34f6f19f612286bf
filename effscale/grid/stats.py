"""Paired statistics for ``effscale grid``: which rows the data can actually tell apart.

Every COMPLETE trial keeps its predicted class per validation image
(``trials/<trial_id>/predictions.npy``, int16, in the fixed validation order) and the run
directory holds ``val_labels.npy`` once. All rows are scored on the *same* images, so
differences between rows are paired: an image that every network gets wrong costs all of
them alike and drops out of the difference. The binomial error of one accuracy (about 1.5
points on 1,000 images) overstates the noise of a paired difference and understates the
spread between seeds; this module measures both.

**The bootstrap** (two-stage, fixed seed so a report is reproducible; each row draws its
seeds from its own stream, keyed by its name, so the same trials give the same intervals
whatever order the trial log holds them in):

* each replicate draws the validation images with replacement, the same draw for every
  row (the pairing), and, for a row trained with k seeds, draws k of its seeds with
  replacement (the seeds of different rows are independent training runs);
* a row's replicate accuracy is its mean correctness over the drawn seeds and images;
* a row's 95% interval is the 2.5-97.5 percentile of its replicate accuracies; its
  difference to the leader (the row with the highest observed mean) is the percentile
  interval of ``leader - row`` over the same replicates.

With one seed this is the ordinary paired bootstrap over images. With k seeds it also
carries the spread between training runs (resampling k seeds slightly understates it, by
about (k-1)/k in variance, which is the price of an assumption-free interval at k = 3).

**Tied with the best**: a row whose difference interval contains 0. The leader is always
in its own tie set. **The choice** among a tie set of several rows: the fewest measured
MACs (then the higher accuracy). Every row was built to cost the same budget, but rounding
moves the measured cost by up to ~20%; when the data cannot separate rows, the cheaper
proxy is the better buy, and the rule depends only on deterministic quantities, so two
reruns with different noise pick from a tie set by the same rule. The cost is measured at
phi=1: what rounding saves there need not carry to larger phi, which is why the tie set is
reported beside the choice.

Trials without saved predictions (runs made before they were kept, custom trainers) fall
back to a normal approximation from the per-seed accuracies: the larger of the binomial
and the between-seed standard error, and an unpaired difference. ``method`` says which.

Pure numpy; no Keras.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import numpy as np

from effscale.runs import RunDir

BOOTSTRAP_SEED = 0
BOOTSTRAP_REPLICATES = 2000
CONFIDENCE = 0.95
Z95 = 1.959964
CHOICE_RULE = "fewest measured MACs among the tied rows (then higher accuracy)"


@dataclass
class RowSample:
    """One row at one rung: its per-seed correctness (k x n booleans) or, failing that, accuracies."""

    key: str
    accuracies: list[float]  # per seed, from the trial metrics
    correct: np.ndarray | None = None  # k x n, per seed and validation image
    val_count: int | None = None
    macs: float = 0.0

    @property
    def accuracy(self) -> float:
        if self.correct is not None:
            return float(self.correct.mean())
        return float(np.mean(self.accuracies))


def load_labels(run: RunDir) -> np.ndarray | None:
    path = run.val_labels_path
    return np.load(path) if path.exists() else None


def load_correct(run: RunDir, trial_ids: Sequence[str], labels: np.ndarray | None) -> np.ndarray | None:
    """k x n correctness of these trials, or None when any of them kept no usable predictions."""
    if labels is None or not trial_ids:
        return None
    rows = []
    for trial_id in trial_ids:
        path = run.predictions_path(trial_id)
        if not path.exists():
            return None
        predictions = np.load(path)
        if predictions.shape != labels.shape:
            return None
        rows.append(predictions == labels)
    return np.stack(rows)


def _image_weights(rng: np.random.Generator, n: int, replicates: int) -> np.ndarray:
    """replicates x n: how often each image is drawn, divided by n (rows sum to 1)."""
    draws = rng.integers(0, n, size=(replicates, n)) + (np.arange(replicates) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=replicates * n).reshape(replicates, n).astype(np.float32) / n


def bootstrap_accuracies(samples: Sequence[RowSample], replicates: int = BOOTSTRAP_REPLICATES,
                         seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """rows x replicates accuracies under the two-stage bootstrap (rows need ``correct``)."""
    rng = np.random.default_rng(seed)  # the images' draws: shared by every row
    # Each row draws its seeds from a stream of its own, keyed by its name, so that no
    # row's intervals depend on which rows come before it (the trial log's order).
    seed_rngs = [np.random.default_rng([seed, zlib.crc32(s.key.encode())]) for s in samples]
    n = samples[0].correct.shape[1]
    out = np.empty((len(samples), replicates))
    chunk = max(1, min(replicates, 2_000_000 // max(n, 1)))
    for start in range(0, replicates, chunk):
        b = min(chunk, replicates - start)
        weights = _image_weights(rng, n, b)  # shared by every row: the pairing
        for i, sample in enumerate(samples):
            per_seed = sample.correct.astype(np.float32) @ weights.T  # k x b
            k = per_seed.shape[0]
            if k == 1:
                out[i, start:start + b] = per_seed[0]
            else:
                pick = seed_rngs[i].integers(0, k, size=(b, k))
                out[i, start:start + b] = per_seed[pick, np.arange(b)[:, None]].mean(axis=1)
    return out


def _normal_se(sample: RowSample) -> float:
    p = sample.accuracy
    binomial = math.sqrt(max(p * (1 - p), 1e-6) / sample.val_count) if sample.val_count else 0.0
    k = len(sample.accuracies)
    seeds = float(np.std(sample.accuracies, ddof=1)) / math.sqrt(k) if k >= 2 else 0.0
    return max(binomial, seeds)


def compare(samples: Sequence[RowSample], replicates: int = BOOTSTRAP_REPLICATES,
            seed: int = BOOTSTRAP_SEED) -> dict[str, dict]:
    """Per row: accuracy with its 95% interval, difference to the leader with its interval, tied."""
    if not samples:
        return {}
    lo_q, hi_q = 100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2
    leader = min(samples, key=lambda s: (-s.accuracy, s.macs, s.key))  # the name last: order-free
    paired = [s for s in samples if s.correct is not None]
    same_n = paired and len({s.correct.shape[1] for s in paired}) == 1
    boot = {}
    if leader.correct is not None and same_n:
        draws = bootstrap_accuracies(paired, replicates, seed)
        boot = {s.key: draws[i] for i, s in enumerate(paired)}
    results = {}
    for s in samples:
        acc = s.accuracy
        if s.key in boot and leader.key in boot:
            acc_lo, acc_hi = np.percentile(boot[s.key], [lo_q, hi_q])
            diffs = boot[leader.key] - boot[s.key]
            diff_lo, diff_hi = np.percentile(diffs, [lo_q, hi_q])
            method = "paired bootstrap" + (f" over images and {s.correct.shape[0]} seeds"
                                           if s.correct.shape[0] > 1 else " over images")
        else:
            se, se_leader = _normal_se(s), _normal_se(leader)
            acc_lo, acc_hi = acc - Z95 * se, acc + Z95 * se
            d_se = math.hypot(se, se_leader) if s.key != leader.key else 0.0
            diff_lo, diff_hi = leader.accuracy - acc - Z95 * d_se, leader.accuracy - acc + Z95 * d_se
            method = "normal approximation (no predictions saved)"
        diff = leader.accuracy - acc
        results[s.key] = {
            "acc": acc, "acc_lo": float(acc_lo), "acc_hi": float(acc_hi), "diff": diff,
            "diff_lo": float(diff_lo), "diff_hi": float(diff_hi), "leader": leader.key,
            "tied": s.key == leader.key or bool(diff_lo <= 0.0 <= diff_hi), "method": method,
            "seeds": len(s.accuracies),
        }
    return results


def paired_difference(a: RowSample, b: RowSample, replicates: int = BOOTSTRAP_REPLICATES,
                      seed: int = BOOTSTRAP_SEED) -> dict:
    """``a - b`` in accuracy with its 95% interval (paired bootstrap where both kept predictions)."""
    lo_q, hi_q = 100 * (1 - CONFIDENCE) / 2, 100 * (1 + CONFIDENCE) / 2
    diff = a.accuracy - b.accuracy
    if a.correct is not None and b.correct is not None and a.correct.shape[1] == b.correct.shape[1]:
        draws = bootstrap_accuracies([a, b], replicates, seed)
        lo, hi = np.percentile(draws[0] - draws[1], [lo_q, hi_q])
        return {"diff": diff, "diff_lo": float(lo), "diff_hi": float(hi), "method": "paired bootstrap"}
    se = math.hypot(_normal_se(a), _normal_se(b))
    return {"diff": diff, "diff_lo": diff - Z95 * se, "diff_hi": diff + Z95 * se,
            "method": "normal approximation (no predictions saved)"}


def verdict(samples: Sequence[RowSample], results: Mapping[str, dict], rung: int | None = None) -> dict:
    """The chosen row, the tie set, the rule and the console's one closing sentence."""
    if not results:
        return {}
    by_key = {s.key: s for s in samples}
    leader = next(iter(results.values()))["leader"]
    ties = sorted((k for k, r in results.items() if r["tied"]), key=lambda k: (-results[k]["acc"], k))
    where = f" at rung {rung}" if rung is not None else ""
    if len(ties) == 1:
        chosen = leader
        others = [k for k in results if k != leader]
        if others:
            closest = min(others, key=lambda k: (results[k]["diff"], k))
            r = results[closest]
            sentence = (f"{leader} beats every other row{where} (smallest margin {100 * r['diff']:.1f} points, "
                        f"95% CI [{100 * r['diff_lo']:.1f}, {100 * r['diff_hi']:.1f}], against {closest}).")
        else:
            sentence = f"{leader} is the only row{where}; nothing to compare it with."
        rule = "the only row not tied: highest accuracy"
    else:
        chosen = min(ties, key=lambda k: (by_key[k].macs, -results[k]["acc"], k))
        sentence = (f"{len(ties)} rows are statistically tied{where}: {', '.join(ties)}; "
                    f"chose {chosen} by {CHOICE_RULE}.")
        rule = CHOICE_RULE
    return {"chosen": chosen, "leader": leader, "tie_set": ties, "rule": rule, "sentence": sentence,
            "rung": rung, "method": results[leader]["method"]}


def fewer_seeds_note(rows: list[dict]) -> str:
    """Rows cut before the last rung ran fewer seeds, so their intervals leave seed noise out: say so."""
    counts = sorted({row["seeds"] for row in rows if row.get("seeds")})
    if len(counts) < 2:
        return ""
    fewest = counts[0]
    return (f"; rows with {fewest} seed{'s' if fewest > 1 else ''} (cut early): "
            + ("over images only, seed-to-seed spread not included" if fewest == 1 else "over their seeds only"))
