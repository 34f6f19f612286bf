"""The trial log: ``trials.jsonl`` in the run dir, one JSON line per status change.

Append-only with fsync (``RunDir.append_jsonl``), so kill -9 loses at most the trials in
flight; the last line per trial id wins; a truncated last line is ignored. Nothing else
holds scheduler state: ``search.next_candidates`` works everything out from this log.

No Keras here.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import asdict, dataclass, field

from effscale.grid.search import Candidate, TrialSpec, TrialStatus  # noqa: F401 - TrialStatus re-exported
from effscale.runs import TRIALS, RunDir, utc_now

TRIALS_FILE = TRIALS


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
    timings: dict = field(default_factory=dict)  # build, compile, train, first_step, evaluate, teardown
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


# --- a stand-in trainer ------------------------------------------------------------------------
def _unit_noise(*parts) -> float:
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(digest).gauss(0.0, 1.0)


def fake_trial(spec: TrialSpec, sleep: float = 0.0, fail_ids: tuple[str, ...] = ()) -> dict:
    """A deterministic trainer for tests and dry runs: no Keras, instant (or ``sleep`` s).

    The score peaks near the paper's point, grows with the epochs and carries seeded noise,
    so rankings, halving and noise flags behave like the real thing.
    """
    if sleep:
        time.sleep(sleep)
    if spec.candidate.id in fail_ids or spec.trial_id in fail_ids:
        raise RuntimeError(f"fake failure for {spec.trial_id}")
    c = spec.candidate
    distance = math.dist((math.log(c.alpha), math.log(c.beta), math.log(c.gamma)),
                         (math.log(1.2), math.log(1.1), math.log(1.15)))
    base = 0.35 + 0.1 * math.log1p(spec.epochs) - 0.3 * distance
    accuracy = min(0.99, max(0.01, base + 0.005 * _unit_noise(c.id, spec.seed, spec.rung)))
    return {
        "metrics": {"val_accuracy": accuracy, "val_loss": 2.5 - 2 * accuracy, "val_count": 1000},
        "images_seen": 1000 * spec.epochs,
        "timings": {"train": sleep},
    }
