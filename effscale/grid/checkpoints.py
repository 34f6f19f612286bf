"""Files a grid trial leaves in the run directory, each written crash-safe.

* ``checkpoints/trials/<trial_id>.npz``: a trial's model variables and optimizer state at
  the end of its training, so that the same candidate and seed promoted to the next rung
  continues from there (ASHA/Hyperband) instead of training again from scratch. Written
  by the process that ran the trial (a worker), before the trial is logged COMPLETE.
* ``trials/<trial_id>/predictions.npy``: the predicted class (int16) of every validation
  image, in the fixed validation order; ``val_labels.npy`` holds the labels, once per run.
  The search loop writes these from the trial's result, so a fake trainer leaves them too.

Every write goes to a temp file in the same folder, is fsync'ed, then renamed over the
target: a reader (a resumed search) sees the old file or the new one, never half of one.
A file that is missing, truncated or unreadable anyway is treated as absent, so a kill -9
at any moment costs at most the trial in flight: it is run again from the last good state.

No Keras here: states are lists of numpy arrays.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from effscale.fsutil import atomic_write
from effscale.runs import RunDir

CHECKPOINTS = Path("checkpoints") / "trials"  # relative to the run dir (tests look there)
PREDICTION_DTYPE = np.int16  # 10 to 1,000 classes fit; 2 bytes per validation image


@dataclass
class TrainState:
    """Where a trial's training stopped: enough to continue it as if it had not stopped."""

    variables: list  # every model variable (weights, BN moving statistics, dropout seed state)
    optimizer: list  # every optimizer variable (iteration count, moments)
    meta: dict = field(default_factory=dict)  # epochs_done, images_trained, seed, candidate

    @property
    def epochs_done(self) -> int:
        return int(self.meta.get("epochs_done", 0))

    @property
    def images_trained(self) -> int:
        return int(self.meta.get("images_trained", 0))


# --- training state ------------------------------------------------------------------------------

def checkpoint_path(run_path: str | os.PathLike, trial_id: str) -> Path:
    return RunDir(Path(run_path)).checkpoints_dir / "trials" / f"{trial_id}.npz"


def save_state(path: str | os.PathLike, state: TrainState) -> Path:
    arrays = {f"v{i}": np.asarray(a) for i, a in enumerate(state.variables)}
    arrays |= {f"o{i}": np.asarray(a) for i, a in enumerate(state.optimizer)}
    counts = {"variables": len(state.variables), "optimizer": len(state.optimizer)}
    arrays["meta"] = np.frombuffer(json.dumps(state.meta | {"_counts": counts}).encode(), dtype=np.uint8)
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


def load_state(path: str | os.PathLike) -> TrainState | None:
    """The state saved at ``path``, or None if there is none or it cannot be read whole."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode())
            counts = meta.pop("_counts")
            variables = [data[f"v{i}"] for i in range(counts["variables"])]
            optimizer = [data[f"o{i}"] for i in range(counts["optimizer"])]
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError):
        return None
    return TrainState(variables, optimizer, meta)


def prune_states(run_path: str | os.PathLike) -> int:
    """Delete every saved training state (the search is finished); returns how many."""
    folder = checkpoint_path(run_path, "-").parent
    if not folder.is_dir():
        return 0
    count = sum(1 for _ in folder.glob("*.npz"))
    shutil.rmtree(folder, ignore_errors=True)
    return count


# --- predictions -----------------------------------------------------------------------------------
def predictions_path(run_path: str | os.PathLike, trial_id: str) -> Path:
    return RunDir(Path(run_path)).predictions_path(trial_id)


def val_labels_path(run_path: str | os.PathLike) -> Path:
    return RunDir(Path(run_path)).val_labels_path


def _save_npy(path: Path, array: np.ndarray) -> Path:
    return atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def _load_npy(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError):
        return None


def as_predictions(values) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"predictions must be one class per validation image, got shape {array.shape}")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(PREDICTION_DTYPE).max):
        raise ValueError("predicted classes must be in [0, 32767]")
    return array.astype(PREDICTION_DTYPE)


def save_predictions(run_path: str | os.PathLike, trial_id: str, predictions) -> Path:
    return _save_npy(predictions_path(run_path, trial_id), as_predictions(predictions))


def load_predictions(run_path: str | os.PathLike, trial_id: str) -> np.ndarray | None:
    return _load_npy(predictions_path(run_path, trial_id))


def save_val_labels(run_path: str | os.PathLike, labels) -> Path:
    """Write ``val_labels.npy`` once; the same labels again are a no-op, others an error.

    Every trial of a run is scored on one fixed validation set: different labels mean the
    trials could not be compared image by image.
    """
    labels = as_predictions(labels)
    path = val_labels_path(run_path)
    existing = _load_npy(path) if path.exists() else None
    if existing is not None:
        if not np.array_equal(existing, labels):
            raise ValueError(f"{path} holds other validation labels than this trial was scored on")
        return path
    return _save_npy(path, labels)


def load_val_labels(run_path: str | os.PathLike) -> np.ndarray | None:
    return _load_npy(val_labels_path(run_path))
