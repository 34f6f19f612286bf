"""The trial log: ``trials.jsonl`` in the run dir, one JSON line per status change.

Append-only with fsync (``RunDir.append_jsonl``), so kill -9 loses at most the trials in
flight; the last line per trial id wins; a truncated last line is ignored. Nothing else
holds scheduler state: ``search.next_candidates`` works everything out from this log.

A COMPLETE trial's ``metrics`` carry ``val_acc`` (= ``val_accuracy``), ``seed``,
``images_trained`` (cumulative: a promoted trial that continued from its previous rung
counts that rung's images too) and ``timing``, seconds per phase (``TIMING_PHASES``).
``images_seen`` on the record counts only the images this trial trained on, so summing
it over a run gives the compute actually spent. ``timing_summary`` gives the
non-training share: every phase except the training steps after the first.

Also here: ``fake_trial`` and ``FakeTrainer``, deterministic stand-ins for the Keras
trainer (tests, dry runs, benchmarks of the bookkeeping).

No Keras here.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from effscale.grid import checkpoints
from effscale.grid.search import Candidate, TrialSpec, TrialStatus  # noqa: F401 - TrialStatus re-exported
from effscale.runs import TRIALS, RunDir, utc_now

TRIALS_FILE = TRIALS
# Where a trial's seconds go. ``first_step`` is the first training step, graph tracing
# included; ``train`` the training steps after it: the only phase that is training.
TIMING_PHASES = ("build", "compile", "first_step", "train", "bn_recal", "eval", "teardown")


@dataclass
class TrialRecord:
    """What one line of ``trials.jsonl`` holds."""

    trial_id: str
    candidate: dict  # Candidate.to_dict(): id, alpha, beta, gamma
    role: str
    seed: int
    rung: int
    epochs: int
    status: TrialStatus
    cost: dict = field(default_factory=dict)  # params, macs, params_ratio, macs_ratio, resolution, blocks
    metrics: dict = field(default_factory=dict)  # val_accuracy, val_loss, train_accuracy, ...
    images_seen: int = 0
    seconds: float | None = None
    timings: dict = field(default_factory=dict)  # seconds per phase as the trainer reports them
    history: list = field(default_factory=list)  # per-epoch metrics
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    attempt: int = 1

    @classmethod
    def start(cls, spec: TrialSpec, cost: dict, attempt: int = 1) -> TrialRecord:
        return cls(spec.trial_id, spec.candidate.to_dict(), spec.role, spec.seed, spec.rung, spec.epochs,
                   TrialStatus.RUNNING, cost=cost, started_at=utc_now(), attempt=attempt)

    @property
    def spec(self) -> TrialSpec:
        return TrialSpec(Candidate.from_dict(self.candidate), self.role, self.seed, self.rung, self.epochs)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrialRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["status"] = TrialStatus(known["status"])
        return cls(**known)


class TrialStore:
    """Reads and appends ``trials.jsonl`` of one run directory."""

    def __init__(self, run: RunDir, name: str = TRIALS_FILE):
        self.run = run
        self.name = name

    def append(self, record: TrialRecord) -> None:
        self.run.append_jsonl(self.name, record.to_dict())

    def lines(self) -> list[dict]:
        return [r for r in self.run.read_jsonl(self.name) if isinstance(r, dict) and "trial_id" in r]

    def latest(self) -> dict[str, dict]:
        """trial id -> its last record (as a dict), in order of first appearance."""
        latest: dict[str, dict] = {}
        for record in self.lines():
            latest[record["trial_id"]] = record
        return latest

    def records(self) -> list[TrialRecord]:
        return [TrialRecord.from_dict(r) for r in self.latest().values()]

    def attempts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.lines():
            if record.get("status") == TrialStatus.RUNNING:
                counts[record["trial_id"]] = counts.get(record["trial_id"], 0) + 1
        return counts


# --- timing over a run ----------------------------------------------------------------------
def timing_summary(trials) -> dict | None:
    """Seconds per phase summed over COMPLETE trials with a ``timing``, and the non-training share.

    ``trials`` is ``TrialStore.latest()`` (or any iterable of record dicts). None when no
    trial recorded its timing (a run made before timings were kept, or a fake trainer).
    """
    records = trials.values() if isinstance(trials, dict) else trials
    totals = dict.fromkeys(TIMING_PHASES, 0.0)
    counted = 0
    for record in records:
        timing = (record.get("metrics") or {}).get("timing") if record.get("status") == "COMPLETE" else None
        if not timing:
            continue
        counted += 1
        for phase in TIMING_PHASES:
            totals[phase] += float(timing.get(phase) or 0.0)
    total = sum(totals.values())
    if not counted or total <= 0:
        return None
    return {"trials": counted, "seconds": total, "phases": totals,
            "non_training_share": (total - totals["train"]) / total}


# --- stand-in trainers -------------------------------------------------------------------------
FAKE_VAL_COUNT = 1000
FAKE_CLASSES = 10


def _unit_noise(*parts) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(digest).gauss(0.0, 1.0)


def _seed_of(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def fake_val_labels() -> np.ndarray:
    return (np.arange(FAKE_VAL_COUNT) % FAKE_CLASSES).astype(checkpoints.PREDICTION_DTYPE)


def fake_predictions(target: float, *parts) -> np.ndarray:
    """Predictions scoring ``round(target * n)`` of ``fake_val_labels``, image by image.

    Which images are right depends mostly on a per-image difficulty shared by every trial
    (as with real networks, easy images are easy for all), plus per-trial jitter, so
    paired comparisons between trials behave like real ones.
    """
    labels = fake_val_labels()
    difficulty = np.random.default_rng(0).random(FAKE_VAL_COUNT)
    jitter = np.random.default_rng(_seed_of(*parts)).normal(0.0, 0.15, FAKE_VAL_COUNT)
    right = np.zeros(FAKE_VAL_COUNT, dtype=bool)
    right[np.argsort(difficulty + jitter)[: int(round(target * FAKE_VAL_COUNT))]] = True
    return np.where(right, labels, (labels + 1) % FAKE_CLASSES).astype(checkpoints.PREDICTION_DTYPE)


def _fake_accuracy(spec: TrialSpec, epochs: int) -> float:
    c = spec.candidate
    distance = math.dist((math.log(c.alpha), math.log(c.beta), math.log(c.gamma)),
                         (math.log(1.2), math.log(1.1), math.log(1.15)))
    base = 0.35 + 0.1 * math.log1p(epochs) - 0.3 * distance
    return min(0.99, max(0.01, base + 0.005 * _unit_noise(c.id, spec.seed, epochs)))


def fake_trial(spec: TrialSpec, sleep: float = 0.0, fail_ids: tuple[str, ...] = ()) -> dict:
    """A deterministic trainer for tests and dry runs: no Keras, instant (or ``sleep`` s).

    The score peaks near the paper's point, grows with the epochs and carries seeded noise,
    so rankings, halving and noise flags behave like the real thing. It returns per-image
    predictions on a fixed 1,000-image validation set, as the real trainer does.
    """
    if sleep:
        time.sleep(sleep)
    if spec.candidate.id in fail_ids or spec.trial_id in fail_ids:
        raise RuntimeError(f"fake failure for {spec.trial_id}")
    predictions = fake_predictions(_fake_accuracy(spec, spec.epochs), spec.candidate.id, spec.seed, spec.epochs)
    labels = fake_val_labels()
    accuracy = float(np.mean(predictions == labels))
    return {
        "metrics": {"val_accuracy": accuracy, "val_loss": 2.5 - 2 * accuracy, "val_count": FAKE_VAL_COUNT,
                    "images_trained": 1000 * spec.epochs},
        "images_seen": 1000 * spec.epochs,
        "timings": {"train": sleep},
        "predictions": predictions,
        "val_labels": labels,
    }


class FakeTrainer:
    """``fake_trial`` with the real trainer's continuation bookkeeping, for tests.

    Bound to a run dir (``for_run``), a trial at rung r > 0 continues from the state its
    candidate and seed saved at rung r-1 (``checkpoints``): it trains only the missing
    epochs, and its score is the one the uninterrupted schedule gives. Its "model" is the
    number of epochs trained, so a wrong continuation shows in ``images_trained``.
    """

    def __init__(self, sleep: float = 0.0, fail_ids: tuple[str, ...] = (), last_rung: int | None = None,
                 images_per_epoch: int = 1000, run_path: str | None = None):
        self.sleep = sleep
        self.fail_ids = tuple(fail_ids)
        self.last_rung = last_rung
        self.images_per_epoch = images_per_epoch
        self.run_path = run_path

    def for_run(self, run_path) -> FakeTrainer:
        return FakeTrainer(self.sleep, self.fail_ids, self.last_rung, self.images_per_epoch, str(run_path))

    def __call__(self, spec: TrialSpec) -> dict:
        result = fake_trial(spec, self.sleep, self.fail_ids)
        start, continued = 0, None
        if self.run_path and spec.rung > 0:
            previous = f"{spec.candidate.id}-s{spec.seed}-r{spec.rung - 1}"
            state = checkpoints.load_state(checkpoints.checkpoint_path(self.run_path, previous))
            if state is not None and state.epochs_done < spec.epochs:
                start, continued = state.epochs_done, previous
        images_now = self.images_per_epoch * (spec.epochs - start)
        if self.run_path and (self.last_rung is None or spec.rung < self.last_rung):
            state = checkpoints.TrainState([np.array([spec.epochs])], [np.array([spec.epochs * 10])],
                                           {"epochs_done": spec.epochs,
                                            "images_trained": self.images_per_epoch * spec.epochs})
            checkpoints.save_state(checkpoints.checkpoint_path(self.run_path, spec.trial_id), state)
        result["metrics"] |= {"images_trained": self.images_per_epoch * spec.epochs, "continued_from": continued}
        result["images_seen"] = images_now
        result["timing"] = dict.fromkeys(TIMING_PHASES, 0.0) | {"train": self.sleep}
        return result


def bind_trainer(run_trial, run_path: str | Path):
    """The trainer bound to a run dir, where it may save training states; as is if it cannot."""
    bind = getattr(run_trial, "for_run", None)
    return bind(str(run_path)) if callable(bind) else run_trial
