"""``effscale.grid.run``: the whole ``effscale grid`` search as one library call.

    from effscale.grid import GridConfig, run
    result = run(GridConfig(dataset="synthetic", limit_train=256), "runs/try")
    result.best["candidate"], result.verdict["sentence"]

Steps, in this order, so that bad input never leaves a half-written run directory:

1. validate the settings and enumerate the search space (one-line ``ConfigError``);
2. on ``resume``, open the run dir and refuse any changed setting (``RunDir.check_resume``),
   except ``confirm_phi`` while no confirmation has started: a finished search can be
   checked one step up afterwards (``effscale grid --resume RUN --confirm-phi 2``);
3. load the proxy task (``ProxyTrainer.load``: the dataset loader refuses data that cannot
   train) unless a ``run_trial`` callable is passed (tests pass ``trials.fake_trial``);
4. only then create the run dir, write the manifest and attach ``effscale.log``;
5. run the schedule (``executors.run_search``), resumable from ``trials.jsonl`` alone;
6. write the reports and ``best.json`` whatever happened (``report.write_reports``);
7. with ``confirm_phi``, retrain the chosen point, the paper's point and the single-axis
   rows one step of phi up (``grid.confirm``).

Python warnings from the libraries (Keras's among them) go to the run's ``effscale.log``,
never to the console. Keras is imported only by the proxy trainer, so this module stays
importable without it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from effscale.errors import ConfigError, RunDirError
from effscale.grid.config import GridConfig
from effscale.grid.search import SearchSpace, TrialStatus
from effscale.runs import RunDir, open_run_dir, prepare_run_dir, timestamp_name


@dataclass
class GridResult:
    """What a finished (or stopped) search leaves: the ranked rows, the verdict, where it is."""

    run_dir: Path
    config: GridConfig
    rows: list[dict]
    summary: dict
    verdict: dict = field(default_factory=dict)  # stats.verdict: chosen row, tie set, rule, sentence
    seconds: float = 0.0
    ran: int = 0
    confirm: dict | None = None

    @property
    def best(self) -> dict | None:
        chosen = self.verdict.get("chosen")
        return next((r for r in self.rows if r["candidate"] == chosen), None)


def stored_config(run_dir) -> GridConfig:
    """The settings a grid run directory was created with (the base of a resumed config)."""
    return _manifest_config(open_run_dir(Path(run_dir), "grid"))


def _manifest_config(run: RunDir) -> GridConfig:
    return GridConfig.from_dict(run.read_manifest().get("config", {}))


def check_resume(run: RunDir, config: GridConfig) -> bool:
    """Refuse any changed setting but ``confirm_phi``; True when that one changes.

    The confirmation runs after the search and never changes its trials, so it may be added
    to (or changed on) a run until it has started; then its rows are fixed.
    """
    stored = _manifest_config(run)
    run.check_resume(config.replace(confirm_phi=stored.confirm_phi).to_dict())
    if config.confirm_phi == stored.confirm_phi:
        return False
    from effscale.grid.confirm import SUBDIR

    check = RunDir(run.path / SUBDIR)
    if check.manifest_path.exists():
        started = check.read_manifest().get("config", {}).get("phi")
        raise RunDirError(f"Run dir {run.path} has a confirmation at phi={started:g} under way; resume it "
                          f"without --confirm-phi, or pass a new --run-dir.")
    return True


def record_confirm_phi(run: RunDir, confirm_phi: float | None) -> None:
    """Write a resumed run's new ``confirm_phi`` into its manifest (reports read it there)."""
    from effscale.fsutil import atomic_write_json

    manifest = run.read_manifest()
    manifest["config"] = dict(manifest.get("config") or {}, confirm_phi=confirm_phi)
    atomic_write_json(run.manifest_path, manifest)


def default_run_dir(config: GridConfig) -> Path:
    label = Path(str(config.dataset).rstrip("/")).name.split(".")[0] or "data"
    return Path("runs") / timestamp_name("grid", label)


@contextlib.contextmanager
def warnings_to_log(logger: logging.Logger):
    """Route Python warnings to the run log's handlers only, for the duration of the search."""
    captured = logging.getLogger("py.warnings")
    handlers = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    saved = captured.propagate
    for handler in handlers:
        captured.addHandler(handler)
    captured.propagate = False  # with no handler, logging's last resort would print to stderr
    if not handlers:
        captured.addHandler(logging.NullHandler())
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        logging.captureWarnings(False)
        for handler in list(captured.handlers):
            captured.removeHandler(handler)
        captured.propagate = saved


def _trainer(config: GridConfig, run_trial, cache_dir):
    """The run_trial callable and what the manifest records about its data."""
    if run_trial is not None:
        return run_trial, getattr(run_trial, "num_classes", 10), getattr(run_trial, "dataset_summary",
                                                                        {"name": "custom run_trial"}), None
    from effscale.grid.proxy import ProxyTrainer

    trainer = ProxyTrainer.load(config, cache_dir=cache_dir)
    return trainer, trainer.num_classes, trainer.dataset_summary, trainer.backend


def run(config: GridConfig, run_dir=None, *, resume: bool = False, executor="local", run_trial=None,
        progress=None, overwrite: bool = False, retry_failed: bool = False, cache_dir=None,
        ray_address: str | None = None, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
        on_start=None) -> GridResult:
    """Run (or resume) a grid search in ``run_dir``; see the module docstring for the steps.

    ``executor`` is "local", "ray" or an executor object; ``progress`` receives
    ``begin/started/finished`` calls; ``on_start(run, space, fresh, done)`` is called once the
    run dir is ready (the CLI prints its first line there).
    """
    from effscale.grid import report
    from effscale.grid.executors import make_executor, run_search
    from effscale.grid.trials import TrialStore

    config = config.validate()
    for flag, value in (("--cpus-per-trial", cpus_per_trial), ("--gpus-per-trial", gpus_per_trial)):
        if not (math.isfinite(value) and 0 <= value <= 1024):
            raise ConfigError(f"{flag} must be a number between 0 and 1024, got {value:g}")
    space = SearchSpace.from_config(config)
    confirm_changed = False
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs the run_dir to resume")
        run = open_run_dir(Path(run_dir), "grid")
        confirm_changed = check_resume(run, config)
    trainer, num_classes, dataset_info, backend = _trainer(config, run_trial, cache_dir)
    if not resume:
        run = prepare_run_dir(Path(run_dir) if run_dir is not None else default_run_dir(config), overwrite)
    with run:
        if confirm_changed:
            record_confirm_phi(run, config.confirm_phi)
        if not resume:
            manifest = run.write_manifest("grid", config.to_dict(), seed=config.data_seed, backend=backend)
            from effscale.fsutil import atomic_write_json

            atomic_write_json(run.manifest_path, manifest | {"num_classes": num_classes, "dataset": dataset_info})
        logger = run.attach_log()
        store = TrialStore(run)
        done = sum(1 for r in store.latest().values() if r["status"] == TrialStatus.COMPLETE)
        logger.info("grid %s: %d entries, %d planned trials", "resume" if resume else "start",
                    len(space.entries), space.planned_trials())
        if on_start is not None:
            on_start(run, space, not resume, done)

        def new_executor():  # run_search closes its executor when it returns
            if isinstance(executor, str):
                return make_executor(executor, ray_address, cpus_per_trial, gpus_per_trial)
            return executor

        with warnings_to_log(logger):
            try:
                outcome = run_search(space, store, trainer, new_executor(), progress, retry_failed, num_classes)
            finally:
                _write_reports(run, logger)
            info = report.build(run)[4]
            if config.confirm_phi is not None and info["finished"] and info["verdict"].get("chosen"):
                from effscale.grid.confirm import run_confirmation

                try:
                    run_confirmation(run, space, info["verdict"], trainer, new_executor(), progress, num_classes)
                finally:
                    _write_reports(run, logger)
        cfg, _, _, rows, info = report.build(run)
        return GridResult(run.path, cfg, rows, info, info.get("verdict", {}), outcome.seconds, outcome.ran,
                          info.get("confirm"))


def _write_reports(run: RunDir, logger: logging.Logger) -> None:
    from effscale import console
    from effscale.grid import report

    try:
        config, space, trials, rows, info = report.build(run)
        report.write_reports(run, config, space, trials, rows, info)
    except Exception as exc:  # noqa: BLE001 - never hide why the search stopped
        logger.exception("writing the reports failed")
        console.warn(f"reports were not written: {type(exc).__name__}: {exc}")
