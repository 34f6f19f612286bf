"""``effscale.transfer.run`` (defined here, re-exported by the package): the whole ``effscale transfer`` command as one library call.

    from effscale.transfer import TransferConfig, run
    result = run(TransferConfig(variant="b0", dataset="cifar10"), "runs/b0-cifar10")
    result.metrics["top1"]

1. Everything that can be checked before a run directory exists is checked first, so bad
   input leaves nothing behind: the resume settings, the variant, the weights, the
   dataset (its classes included).
2. The run directory is created (or reopened with ``resume=True``) and locked; a fresh
   run writes its manifest.
3. ``train.transfer`` trains, committing every epoch; the reports are written even when
   training stops early.
4. A fresh run that fails before its first committed epoch is removed again.

Keras is imported only after every cheap check (loading CIFAR through keras.datasets aside).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from effscale import console
from effscale.errors import EffscaleError
from effscale.runs import RunDir, open_run_dir, prepare_run_dir, timestamp_name
from effscale.transfer.config import TransferConfig, read_transfer_config, resolve_transfer_config


@dataclass(frozen=True)
class TransferResult:
    """What a finished (or NaN-stopped) transfer run produced."""

    run: RunDir
    config: TransferConfig
    metrics: dict

    @property
    def status(self) -> str:
        return self.metrics.get("status", "unknown")

    @property
    def top1(self) -> float | None:
        return self.metrics.get("top1")


def resume_config(run_dir, *, recipe: str | None = None, preset: str | None = None,
                  base: TransferConfig | None = None, **flags) -> TransferConfig:
    """The config a ``--resume`` asks for: the stored one, with whatever the command line
    adds on top; refused in one line if that changes any setting (``check_resume``), so
    ``--print-config`` and a real resume agree."""
    run = open_run_dir(Path(run_dir), "transfer")
    stored = read_transfer_config(run.manifest_path)
    given = {k: v for k, v in flags.items() if v is not None}
    start = base or stored
    recipe = recipe or start.recipe
    preset = preset if preset is not None else stored.preset
    if base is None and recipe == stored.recipe and preset == stored.preset:
        if "augment" in given:
            given["augment"] = tuple(given["augment"])
        config = replace(stored, **given).validate()  # re-applying a preset would undo flags given with it
    else:
        config = resolve_transfer_config(recipe, preset, base=start, **given)
    check_resume(run, config)
    return config


def check_resume(run: RunDir, config: TransferConfig) -> None:
    """Refuse to resume ``run`` with settings other than those it was created with. A setting
    added to ``TransferConfig`` after the run was created counts as its default there, so a
    run from an older effscale still resumes when that setting is left alone."""
    stored = run.read_manifest().get("config") or {}
    defaults = TransferConfig().to_dict()
    run.check_resume({k: v for k, v in config.to_dict().items() if k in stored or v != defaults[k]})


def precheck(config: TransferConfig):
    """The variant and the weights, checked before any dataset is read or model built."""
    from effscale.schemas import resolve_network
    from effscale.weights.resolve import precheck as precheck_weights

    name, spec = resolve_network(config.variant)
    precheck_weights(config.weights, name, spec)
    if config.strategy == "top-blocks" and config.blocks > spec.total_blocks:
        raise EffscaleError(f"--blocks {config.blocks} is more than {name}'s {spec.total_blocks} MBConv blocks; pass "
                            f"--blocks {spec.total_blocks} or fewer (or --strategy full to train everything)")


def default_run_dir(config: TransferConfig) -> Path:
    from effscale.data.datasets import dataset_label

    variant = Path(config.variant).stem if config.variant.endswith(".json") else config.variant
    return Path("runs") / timestamp_name("transfer", variant, dataset_label(config.dataset))


def run(config: TransferConfig, run_dir=None, *, resume: bool = False, progress: bool | None = None,
        overwrite: bool = False, distribute: bool = False,
        on_start: Callable[[RunDir], None] | None = None) -> TransferResult:
    """Train ``config`` in ``run_dir`` (default ``runs/<time>-transfer-<variant>-<dataset>``).

    ``resume=True`` continues the run in ``run_dir`` after its last committed epoch and
    refuses any changed setting. ``progress`` shows a progress bar on stderr. ``on_start``
    is called with the locked run directory before training starts (the CLI uses it to
    point its error handler at the run's log). Raises ``EffscaleError`` subclasses (one
    line each) for bad input; a NaN loss ends with ``result.status == "nan"``.
    """
    # 1. Checks that need no run directory.
    if resume:
        if run_dir is None:
            raise EffscaleError("resume needs the run directory to continue")
        target = open_run_dir(Path(run_dir), "transfer")
        check_resume(target, config)
    config.validate()
    precheck(config)
    from effscale.data.datasets import load_dataset

    console.info(f"loading dataset {config.dataset} ...")
    data = load_dataset(config.dataset, data_dir=config.data_dir, cache_dir=config.cache_dir,
                        limit_train=config.limit_train, limit_val=config.limit_val, seed=config.seed)

    # 2. The run directory.
    if not resume:
        target = prepare_run_dir(Path(run_dir) if run_dir is not None else default_run_dir(config),
                                 overwrite=overwrite)
    from effscale.transfer import report as transfer_report
    from effscale.transfer import train  # imports Keras

    state = target.state_path
    try:
        with target:
            logger = target.attach_log()
            if on_start is not None:
                on_start(target)
            if not resume:
                import keras

                target.write_manifest("transfer", config.to_dict(), seed=config.seed, backend=keras.backend.backend())
                console.info(f"run directory: {target.path}")
            logger.info("transfer %s", config.to_dict())
            # 3. Train; the reports are written whatever happens after the first commit.
            try:
                metrics = train.transfer(config, target, progress=bool(progress), data=data, distribute=distribute)
            finally:
                if state.exists():
                    transfer_report.write_reports(target)
    except EffscaleError:
        # 4. Nothing was trained: do not leave an empty run behind.
        if not resume and not state.exists():
            _discard(target)
        raise
    return TransferResult(target, config, metrics)


def _discard(run: RunDir) -> None:
    logger = logging.getLogger("effscale")
    for handler in list(logger.handlers):
        if getattr(handler, "baseFilename", None) == str(run.log_path.resolve()):
            logger.removeHandler(handler)
            handler.close()
    shutil.rmtree(run.path, ignore_errors=True)
