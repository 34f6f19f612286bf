"""Running the search: the loop, and where each trial runs (this process or a Ray cluster).

``run_search`` asks ``search.next_candidates`` what to run, hands the trials to an executor
and appends every status change to the trial log *in this process* (the single writer
holding the run dir's lock), whichever executor ran the trial:

* ``LocalExecutor`` runs trials on this machine: one after another in this process
  (``workers=1``), or in ``workers`` worker processes (``effscale.grid.workers``), which
  use the cores a single trial leaves idle and are recycled so memory cannot grow;
* ``RayExecutor`` runs each trial as a Ray task with its own ``num_cpus``/``num_gpus``
  request, at most as many at once as the cluster has room for. Ray is an optional extra
  (``pip install 'effscale[ray]'``) and is imported only when chosen.

The loop accepts any ``run_trial(spec) -> dict`` callable: the CLI passes the Keras proxy
trainer, tests pass ``trials.fake_trial``. It returns ``{"metrics": {...,
"val_accuracy": float}, "images_seen": int, "timings": {...}}``, optionally ``"timing"``
(seconds per ``trials.TIMING_PHASES``), ``"predictions"`` (a class per validation image)
and ``"val_labels"``. The loop writes the predictions (``checkpoints``) before it logs the
trial COMPLETE, and deletes the saved training states once the search is finished.

No Keras here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from effscale.console import describe
from effscale.errors import ConfigError, TrialFailed
from effscale.grid import checkpoints
from effscale.grid.search import SearchSpace, TrialSpec, candidate_cost, longest_first, next_candidates
from effscale.runs import utc_now
from effscale.grid.trials import TrialRecord, TrialStatus, TrialStore, bind_trainer

log = logging.getLogger("effscale.grid")

RunTrial = Callable[[TrialSpec], dict]
Start = Callable[[TrialSpec], None]
Finish = Callable[[TrialSpec, "dict | None", "BaseException | None", float], None]
MAX_FAILURES_IN_A_ROW = 3
RAY_TRIALS_PER_WORKER = 8


class LocalExecutor:
    """Trials one after another in this process, or (``workers`` >= 2) in worker processes."""

    name = "local"

    def __init__(self, workers: int = 1, trials_per_worker: int | None = None):
        self.workers = max(1, int(workers))
        self._pool = None
        if self.workers > 1:
            from effscale.grid.workers import WorkerPool

            self._pool = WorkerPool(self.workers, trials_per_worker)

    def run(self, specs: list[TrialSpec], run_trial: RunTrial, start: Start, finish: Finish) -> None:
        if self._pool is not None:
            self._pool.run(specs, run_trial, start, finish)
            return
        self._run_here(specs, run_trial, start, finish)

    def _run_here(self, specs: list[TrialSpec], run_trial: RunTrial, start: Start, finish: Finish) -> None:
        for spec in specs:
            start(spec)
            began = time.perf_counter()
            try:
                result = run_trial(spec)
            except Exception as exc:  # noqa: BLE001 - a failing trial must not stop the search
                log.exception("trial %s failed", spec.trial_id)
                finish(spec, None, exc, time.perf_counter() - began)
            else:
                finish(spec, result, None, time.perf_counter() - began)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--executor ray needs Ray, which is not installed; pip install 'effscale[ray]' "
            "(or 'ray[default]'), or use --executor local"
        ) from None
    return ray


def _ray_trial(run_trial: RunTrial, spec: dict) -> dict:
    """What a Ray worker runs: one trial, timed on the worker, then the freed heap handed back
    (as the local workers do, see ``effscale.grid.workers.release_free_heap``)."""
    from effscale.grid.workers import release_free_heap

    began = time.perf_counter()
    result = run_trial(TrialSpec.from_dict(spec))
    release_free_heap()
    return dict(result, worker_seconds=time.perf_counter() - began)


def ray_worker_environment() -> dict[str, str]:
    """What a Ray task's process gets in its environment: the local workers' malloc settings
    (one arena, no per-step mmap), each unless this process's environment says otherwise."""
    from effscale.grid.workers import malloc_environment

    return malloc_environment()


class RayExecutor:
    """Each trial a Ray task with its own CPU/GPU request; the driver writes the log."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1.0, num_gpus: float = 0.0,
                 local_cpus: int | None = None):
        self.ray = import_ray()
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self._put: dict[int, object] = {}
        if not self.ray.is_initialized():
            kwargs = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            elif local_cpus:
                kwargs["num_cpus"] = local_cpus
            try:
                self.ray.init(**kwargs)
            except ConnectionError as exc:
                raise ConfigError(f"cannot reach the Ray cluster at {address}: {exc}") from None
        # max_calls: a fresh worker process every few trials bounds the memory TensorFlow keeps
        # for traced graphs (see docs/grid.md, Limitations).
        self._remote = self.ray.remote(max_calls=RAY_TRIALS_PER_WORKER)(_ray_trial).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0,
            runtime_env={"env_vars": ray_worker_environment()})

    def capacity(self) -> int:
        resources = self.ray.cluster_resources()
        slots = []
        if self.num_cpus:
            slots.append(int(resources.get("CPU", 1) // self.num_cpus))
        if self.num_gpus:
            slots.append(int(resources.get("GPU", 0) // self.num_gpus))
        return max(1, min(slots) if slots else 1)

    def run(self, specs: list[TrialSpec], run_trial: RunTrial, start: Start, finish: Finish) -> None:
        ray = self.ray
        if id(run_trial) not in self._put:  # ship the trainer (and its data) once
            self._put[id(run_trial)] = ray.put(run_trial)
        trainer_ref = self._put[id(run_trial)]
        queue = list(specs)
        in_flight: dict = {}
        began: dict = {}
        limit = self.capacity()
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    spec = queue.pop(0)
                    start(spec)
                    ref = self._remote.remote(trainer_ref, spec.to_dict())
                    in_flight[ref] = spec
                    began[ref] = time.perf_counter()
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    spec = in_flight.pop(ref)
                    seconds = time.perf_counter() - began.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001
                        cause = getattr(exc, "cause", None) or exc
                        log.error("trial %s failed on Ray: %s", spec.trial_id, exc)
                        finish(spec, None, cause, seconds)
                    else:
                        finish(spec, result, None, result.get("worker_seconds", seconds))
        finally:
            for ref in in_flight:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        pass


def make_executor(name: str, ray_address: str | None = None, cpus_per_trial: float = 1.0,
                  gpus_per_trial: float = 0.0, workers: int | None = None):
    """``workers`` (local only): trials in flight at once; default two on a multi-core machine."""
    if name == "local":
        from effscale.grid.workers import default_workers

        return LocalExecutor(default_workers() if workers is None else workers)
    if name == "ray":
        return RayExecutor(ray_address, cpus_per_trial, gpus_per_trial)
    raise ConfigError(f"unknown executor {name!r}; use local or ray")


class Progress:
    """What run_search tells the console; the CLI supplies a rich one."""

    def begin(self, total: int, done: int) -> None: ...
    def started(self, spec: TrialSpec) -> None: ...
    def finished(self, record: TrialRecord, best: dict | None) -> None: ...


@dataclass
class SearchOutcome:
    trials: dict  # trial id -> latest record
    ran: int = 0
    failed: int = 0
    seconds: float = 0.0
    aborted: str | None = None
    failures: list = field(default_factory=list)


def _save_outputs(run_path, spec: TrialSpec, result: dict) -> None:
    """Predictions (and the run's validation labels, once) before the trial is logged COMPLETE."""
    if result.get("val_labels") is not None:
        checkpoints.save_val_labels(run_path, result["val_labels"])
    if result.get("predictions") is not None:
        checkpoints.save_predictions(run_path, spec.trial_id, result["predictions"])


def _trial_metrics(spec: TrialSpec, result: dict, accuracy: float) -> dict:
    """The trainer's metrics plus the fields every COMPLETE trial carries."""
    metrics = dict(result["metrics"], val_accuracy=accuracy, val_acc=accuracy, seed=spec.seed)
    metrics.setdefault("images_trained", int(result.get("images_seen", 0)))
    if result.get("timing") is not None:
        metrics["timing"] = {k: round(float(v), 4) for k, v in result["timing"].items()}
    return metrics


def best_so_far(trials: dict) -> dict | None:
    """The best COMPLETE trial at the highest rung reached (for the progress display)."""
    done = [r for r in trials.values() if r.get("status") == TrialStatus.COMPLETE]
    if not done:
        return None
    return max(done, key=lambda r: (r["rung"], r["metrics"]["val_accuracy"]))


def run_search(
    space: SearchSpace,
    store: TrialStore,
    run_trial: RunTrial,
    executor=None,
    progress: Progress | None = None,
    retry_failed: bool = False,
    num_classes: int = 100,
    max_failures_in_a_row: int = MAX_FAILURES_IN_A_ROW,
) -> SearchOutcome:
    """Run every trial the schedule asks for; resumable at any point from ``store`` alone."""
    executor = executor or LocalExecutor()
    progress = progress or Progress()
    run_path = store.run.path
    run_trial = bind_trainer(run_trial, run_path)
    latest = store.latest()
    retry = {tid for tid, r in latest.items() if r.get("status") == TrialStatus.FAILED.value} if retry_failed else set()
    attempts = store.attempts()
    costs: dict[str, dict] = {}
    in_flight: dict[str, TrialRecord] = {}
    outcome = SearchOutcome(trials=latest)
    streak: list[str] = []
    began = time.perf_counter()

    def cost_of(spec: TrialSpec) -> dict:
        key = spec.candidate.id
        if key not in costs:
            costs[key] = candidate_cost(space.config, spec.candidate, num_classes).to_dict()
        return costs[key]

    def start(spec: TrialSpec) -> None:
        attempts[spec.trial_id] = attempts.get(spec.trial_id, 0) + 1
        record = TrialRecord.start(spec, cost_of(spec), attempts[spec.trial_id])
        store.append(record)
        retry.discard(spec.trial_id)
        in_flight[spec.trial_id] = record
        progress.started(spec)

    def finish(spec: TrialSpec, result: dict | None, error: BaseException | None, seconds: float) -> None:
        record = in_flight.pop(spec.trial_id)
        record.finished_at = utc_now()
        record.seconds = round(seconds, 3)
        if error is None:
            try:
                accuracy = float(result["metrics"]["val_accuracy"])
            except (KeyError, TypeError, ValueError) as exc:
                error = ValueError(f"the trainer returned no metrics.val_accuracy ({exc})")
            else:
                try:
                    _save_outputs(run_path, spec, result)
                except (OSError, ValueError) as exc:
                    error = exc
                else:
                    record.status = TrialStatus.COMPLETE
                    record.metrics = _trial_metrics(spec, result, accuracy)
                    record.images_seen = int(result.get("images_seen", 0))
                    record.timings = dict(result.get("timings", {}))
                    record.history = list(result.get("history", []))
        if error is not None:
            record.status = TrialStatus.FAILED
            record.error = describe(error, 500)
        store.append(record)
        outcome.trials[spec.trial_id] = record.to_dict()
        outcome.ran += 1
        if record.status is TrialStatus.FAILED:
            outcome.failed += 1
            outcome.failures.append(f"{spec.trial_id}: {record.error}")
            streak.append(f"{spec.trial_id}: {record.error}")
            log.warning("trial %s FAILED: %s", spec.trial_id, record.error)
        else:
            streak.clear()
            log.info("trial %s COMPLETE: val_accuracy=%.4f in %.1fs", spec.trial_id,
                     record.metrics["val_accuracy"], seconds)
        progress.finished(record, best_so_far(outcome.trials))
        if len(streak) >= max_failures_in_a_row:
            raise TrialFailed(
                f"{len(streak)} trials failed in a row, so the search stopped (last: {streak[-1]}); "
                "fix the cause, then resume with --resume RUN_DIR --retry-failed"
            )

    done = sum(1 for r in latest.values()
               if r.get("status") in (TrialStatus.COMPLETE, TrialStatus.FAILED) and r.get("trial_id") not in retry)
    progress.begin(space.planned_trials(), done)
    try:
        while True:
            outcome.trials = store.latest()
            pending = next_candidates(space, outcome.trials, retry)
            if not pending:
                if not any(r.get("status") == TrialStatus.RUNNING.value for r in outcome.trials.values()):
                    checkpoints.prune_states(run_path)  # nothing left to continue from
                break
            if not space.seed_major:  # the scale-up check keeps its seed-by-seed order
                pending = longest_first(pending, lambda spec: cost_of(spec)["macs"])
            executor.run(pending, run_trial, start, finish)
    finally:
        outcome.trials = store.latest()
        outcome.seconds = time.perf_counter() - began
        executor.close()
    return outcome
