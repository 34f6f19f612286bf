"""Run directories: the unit of work for ``grid`` and ``transfer``.

A run directory holds ``manifest.json`` (written once: command, resolved config,
versions), an ``effscale.log`` with full tracebacks, a ``.lock`` that refuses a second
writer, and whatever the command appends. ``RunDir`` is the only place that spells a path
inside a run: every file is one of its properties. Derived output (``reports/``,
``plots/``) can always be rebuilt from it. No Keras here.

Resume order (after big_vision), the same for ``grid`` and ``transfer``:
1. ``--resume RUN_DIR`` opens the run (``open_run_dir``); if ``RunDir.check_resume`` finds
   every setting unchanged -> resume;
2. any setting changed (preset and recipe included) -> refuse with one line naming it;
3. without ``--resume``, ``prepare_run_dir`` starts fresh and refuses an existing run
   unless ``--overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from effscale import __version__
from effscale.errors import RunDirError
from effscale.fsutil import append_line, atomic_write_json

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
LOG = "effscale.log"
TRIALS = "trials.jsonl"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def timestamp_name(*parts: str) -> str:
    """``20261125-091500-transfer-b0-cifar100``: sorts by time, says what ran."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return "-".join([stamp, *[p for p in parts if p]])


def library_versions() -> dict:
    """Versions of what is already imported (never imports anything heavy itself)."""
    versions = {"python": platform.python_version(), "effscale": __version__}
    for name in ("keras", "tensorflow", "jax", "torch", "numpy", "pandas", "ray"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


_MISSING = object()


def _plain(settings: dict) -> dict:
    """Settings as JSON holds them, so a tuple and the list it was stored as compare equal."""
    return json.loads(json.dumps(settings, default=str))


def _setting(key: str, settings: dict) -> str:
    if key not in settings:
        return f"no {key} setting"
    value = settings[key]
    return f"{key}={value}" if isinstance(value, str) and value else f"{key}={json.dumps(value)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # --- paths: every file of a run, spelled once -----------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def log_path(self) -> Path:
        return self.path / LOG

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    @property
    def trials_path(self) -> Path:
        """Grid: the append-only trial log."""
        return self.path / TRIALS

    @property
    def trials_dir(self) -> Path:
        """Grid: one folder per trial (``trial_dir``)."""
        return self.path / "trials"

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials_dir / trial_id

    def predictions_path(self, trial_id: str) -> Path:
        """Grid: int16 predicted class per validation image, in the fixed validation order."""
        return self.trial_dir(trial_id) / "predictions.npy"

    @property
    def val_labels_path(self) -> Path:
        """Grid: the validation labels every trial's predictions are scored against."""
        return self.path / "val_labels.npy"

    @property
    def best_path(self) -> Path:
        """Grid: the winning coefficients, what ``effscale scale --from`` reads."""
        return self.path / "best.json"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def state_path(self) -> Path:
        """Transfer: the commit point of every finished epoch."""
        return self.checkpoints_dir / "state.json"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / "last.keras"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints_dir / "best.keras"

    def pending_checkpoint(self, epoch: int) -> Path:
        """Transfer: an epoch's model before it is committed (renamed to ``last.keras``)."""
        return self.checkpoints_dir / f".epoch-{epoch}.keras"

    @property
    def history_path(self) -> Path:
        return self.path / "history.csv"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def reports_dir(self) -> Path:
        return self.path / "reports"

    @property
    def plots_dir(self) -> Path:
        return self.path / "plots"

    def report(self, name: str) -> Path:
        """A file under ``reports/``, its folder created."""
        return self.sub("reports", name)

    def plot(self, name: str) -> Path:
        """A file under ``plots/``, its folder created."""
        return self.sub("plots", name)

    def sub(self, *parts: str) -> Path:
        """A path inside the run, creating its parent folders."""
        target = self.path.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    # --- manifest -------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{self.path} is not an effscale run directory (no {MANIFEST})") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{self.manifest_path} is unreadable ({exc}); it cannot be resumed") from None

    def write_manifest(self, command: str, config: dict, seed: int | None = None,
                       backend: str | None = None) -> dict:
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "effscale_version": __version__,
            "command": command,
            "config": config,
            "backend": backend,
            "versions": library_versions(),
            "seed": seed,
            "created_at": utc_now(),
            "argv": sys.argv,
        }
        atomic_write_json(self.manifest_path, manifest)
        return manifest

    def check_resume(self, settings: dict) -> None:
        """Refuse to resume with any setting changed, naming the first one that differs.

        ``settings`` is the whole resolved config (preset and recipe included) as it would
        be written to a fresh manifest; it is compared with the manifest's ``config``.
        """
        stored = _plain(self.read_manifest().get("config") or {})
        wanted = _plain(settings)
        for key in [*wanted, *(k for k in stored if k not in wanted)]:
            if stored.get(key, _MISSING) != wanted.get(key, _MISSING):
                raise RunDirError(
                    f"Run dir {self.path} was created with {_setting(key, stored)}; this command asks for "
                    f"{_setting(key, wanted)}. Resume without changing settings, or pass a new --run-dir."
                )

    def check_manifest(self, command: str, config: dict) -> dict:
        """Refuse a run of another command, then any changed setting (``check_resume``)."""
        manifest = self.read_manifest()
        if manifest.get("command") != command:
            raise RunDirError(
                f"{self.path} is an effscale {manifest.get('command')!r} run, not a {command!r} run"
            )
        self.check_resume(config)
        return manifest

    # --- lock -----------------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """One writer per run dir; a lock left by a dead process (kill -9) is taken over."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.lock_path
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise RunDirError(
                        f"{self.path} is in use by process {pid}; wait for it or pass another --run-dir"
                    ) from None
                lock.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return
        raise RunDirError(f"could not lock {self.path}")

    def release_lock(self) -> None:
        self.lock_path.unlink(missing_ok=True)

    def __enter__(self) -> RunDir:
        self.acquire_lock()
        return self

    def __exit__(self, *exc) -> None:
        self.release_lock()

    # --- logging --------------------------------------------------------------------------
    def attach_log(self) -> logging.Logger:
        """Send the ``effscale`` logger (debug level, tracebacks included) to effscale.log."""
        logger = logging.getLogger("effscale")
        logger.setLevel(logging.DEBUG)
        target = str(self.log_path.resolve())
        if not any(getattr(h, "baseFilename", None) == target for h in logger.handlers):
            self.path.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(target, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            from effscale.backend import native_startup_output

            for text in native_startup_output:  # kept off the console, not lost
                logger.debug("TensorFlow start-up output:\n%s", text.rstrip())
        return logger

    def append_jsonl(self, name: str, record: dict) -> None:
        append_line(self.sub(name), json.dumps(record, default=str))

    def read_jsonl(self, name: str) -> list[dict]:
        """Every complete line; a truncated last line (a crash mid-write) is ignored."""
        path = self.path / name
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records


def prepare_run_dir(path: Path, overwrite: bool = False) -> RunDir:
    """A fresh run dir at ``path``; refuses to clobber an existing run unless ``overwrite``."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"{path} already exists; resume it with --resume {path}, pass a new --run-dir, "
                "or --overwrite to start again"
            )
        if not (path / MANIFEST).exists():
            raise RunDirError(f"refusing to --overwrite {path}: it is not an effscale run directory")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return RunDir(path)


def open_run_dir(path: Path, command: str) -> RunDir:
    """An existing run dir of ``command`` for --resume or report."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path} is not a directory; pass the run directory printed when the run started")
    run = RunDir(path)
    manifest = run.read_manifest()
    if manifest.get("command") != command:
        raise RunDirError(f"{path} is an effscale {manifest.get('command')!r} run, not a {command!r} run")
    return run
