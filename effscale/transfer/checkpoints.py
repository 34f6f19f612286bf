"""Crash-safe checkpoint commits of a transfer run.

The commit protocol of an epoch (``Checkpointer.commit``):

1. the model (with optimizer state) is saved to ``checkpoints/.epoch-N.keras``;
2. if the epoch is the best so far, ``best.keras`` is replaced atomically;
3. ``checkpoints/state.json`` is replaced atomically: epoch N, the history rows, best
   epoch, accumulated wall time. **This is the commit point.**
4. ``.epoch-N.keras`` is renamed to ``last.keras``; ``history.csv`` is rewritten atomically.

A kill before 3 loses only the epoch in flight (it is trained again on resume); a kill
between 3 and 4 is finished by the next ``--resume`` (rename the pending file), so the
history always has exactly one row per committed epoch. No Keras import: the model is
only asked to ``save``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from effscale.errors import EffscaleError
from effscale.fsutil import atomic_write_json, atomic_write_text
from effscale.runs import RunDir

HISTORY_COLUMNS = ("epoch", "phase", "lr", "loss", "accuracy", "top5", "val_loss", "val_accuracy",
                   "val_top5", "train_time_s", "epoch_time_s", "images_per_s")


class RunStatus(str, Enum):
    """Where a transfer run stands, as ``state.json`` and ``metrics.json`` record it (a str,
    so the JSON files hold the plain words)."""

    RUNNING = "running"
    COMPLETE = "complete"
    NAN = "nan"  # stopped on a NaN loss; the report is still written

    def __str__(self) -> str:
        return self.value


@dataclass
class Checkpointer:
    run: RunDir
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_val_accuracy: float = -1.0
    wall_before: float = 0.0
    status: RunStatus = RunStatus.RUNNING
    started: float = field(default_factory=time.monotonic)
    extra: dict = field(default_factory=dict)

    @property
    def ckpt(self) -> Path:
        return self.run.checkpoints_dir

    @property
    def epochs_done(self) -> int:
        return len(self.history)

    def wall_time(self) -> float:
        return self.wall_before + time.monotonic() - self.started

    @classmethod
    def restore(cls, run: RunDir) -> Checkpointer | None:
        """The committed state of ``run`` (finishing an interrupted commit), or None if fresh."""
        path = run.state_path
        if not path.is_file():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EffscaleError(f"{path} is unreadable ({exc}); start a new run") from None
        ckpt = run.checkpoints_dir
        pending = run.pending_checkpoint(state["epoch"])
        if pending.is_file():
            os.replace(pending, run.last_checkpoint)  # step 4 of a commit killed half-way
        for leftover in ckpt.glob(".*.keras"):
            leftover.unlink(missing_ok=True)  # an epoch in flight when the process died
        me = cls(run, history=list(state["history"]), best_epoch=state.get("best_epoch"),
                 best_val_accuracy=state.get("best_val_accuracy", -1.0), wall_before=state.get("wall_time_s", 0.0),
                 status=RunStatus(state.get("status", RunStatus.RUNNING)), extra=state.get("extra", {}))
        me.write_history()
        return me

    def state(self) -> dict:
        return {"epoch": self.epochs_done, "phase": self.history[-1]["phase"] if self.history else None,
                "history": self.history, "best_epoch": self.best_epoch, "best_val_accuracy": self.best_val_accuracy,
                "wall_time_s": round(self.wall_time(), 3), "status": self.status.value, "extra": self.extra}

    def commit(self, model, row: dict) -> None:
        self.ckpt.mkdir(parents=True, exist_ok=True)
        self.extra["seed_states"] = seed_states(model)
        epoch = row["epoch"]
        pending = self.run.pending_checkpoint(epoch)
        model.save(str(pending))
        val = row.get("val_accuracy")
        if val is not None and not math.isnan(val) and val > self.best_val_accuracy:
            tmp = self.ckpt / ".best-tmp.keras"
            shutil.copyfile(pending, tmp)
            os.replace(tmp, self.run.best_checkpoint)
            self.best_epoch, self.best_val_accuracy = epoch, float(val)
        self.history.append(row)
        atomic_write_json(self.run.state_path, self.state())  # commit point
        os.replace(pending, self.run.last_checkpoint)
        self.write_history()

    def write_status(self, status: RunStatus) -> None:
        self.status = status
        atomic_write_json(self.run.state_path, self.state())

    def write_history(self) -> None:
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(HISTORY_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in self.history:
            writer.writerow(row)
        atomic_write_text(self.run.history_path, buffer.getvalue())


def _seed_generators(model, prefix: str = ""):
    """``(name, SeedGenerator)`` of every layer, nested models included, named by layer path."""
    import keras

    for layer in getattr(model, "layers", []):
        name = f"{prefix}{layer.name}"
        for attr, value in sorted(vars(layer).items()):
            if isinstance(value, keras.random.SeedGenerator):
                yield f"{name}.{attr}", value
        yield from _seed_generators(layer, f"{name}/")


def seed_states(model) -> dict[str, list[int]]:
    """Where each dropout/drop-connect random stream stands: ``.keras`` files do not keep it,
    so a resumed run would draw the first epoch's dropout masks again."""
    import keras

    return {name: [int(v) for v in keras.ops.convert_to_numpy(gen.state.value)]
            for name, gen in _seed_generators(model)}


def restore_seed_states(model, states: dict | None) -> int:
    """Put saved random-stream positions back; returns how many were restored."""
    if not states:
        return 0
    import numpy as np

    restored = 0
    for name, gen in _seed_generators(model):
        if name in states:
            gen.state.assign(np.asarray(states[name], dtype=gen.state.dtype))
            restored += 1
    return restored
