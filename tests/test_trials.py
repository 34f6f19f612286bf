"""The append-only trial log and the search loop with a fake trainer (no Keras)."""

from __future__ import annotations

import functools
import json
import os
import platform

import pytest

from effscale.errors import TrialFailed
from effscale.grid.executors import run_search
from effscale.grid.config import preset
from effscale.grid.search import Candidate, SearchSpace, TrialSpec
from effscale.grid.workers import MALLOC_SETTINGS
from effscale.runs import RunDir
from effscale.grid.trials import TrialRecord, TrialStatus, TrialStore, fake_trial


@pytest.fixture
def store(tmp_path):
    return TrialStore(RunDir(tmp_path))


def _spec(seed=0, rung=0):
    return TrialSpec(Candidate(1.2, 1.1, 1.15), "paper", seed, rung, 1)


def test_last_line_per_trial_wins(store):
    record = TrialRecord.start(_spec(), {"macs": 1})
    store.append(record)
    record.status = TrialStatus.COMPLETE
    record.metrics = {"val_accuracy": 0.5}
    store.append(record)
    store.append(TrialRecord.start(_spec(seed=1), {}))
    latest = store.latest()
    assert list(latest) == ["a1.20-b1.10-g1.15-s0-r0", "a1.20-b1.10-g1.15-s1-r0"]
    assert latest["a1.20-b1.10-g1.15-s0-r0"]["status"] == "COMPLETE"
    assert TrialRecord.from_dict(latest["a1.20-b1.10-g1.15-s0-r0"]).spec == _spec()
    assert len(store.lines()) == 3


def test_truncated_last_line_is_ignored(store):
    store.append(TrialRecord.start(_spec(), {}))
    with open(store.run.path / "trials.jsonl", "a") as handle:
        handle.write('{"trial_id": "a1.20-b1.10-g1.15-s0-r0", "status": "COMP')  # kill -9 mid-write
    assert store.latest()["a1.20-b1.10-g1.15-s0-r0"]["status"] == "RUNNING"


def test_status_enum():
    assert not TrialStatus.RUNNING.is_finished()
    assert TrialStatus.FAILED.is_finished() and TrialStatus.COMPLETE.is_finished()


def test_search_runs_every_planned_trial_once(store):
    space = SearchSpace.from_config(preset("smoke").replace(seeds=2))
    outcome = run_search(space, store, fake_trial)
    latest = store.latest()
    assert outcome.ran == space.planned_trials() == len(latest)
    assert all(r["status"] == "COMPLETE" for r in latest.values())
    assert all(r["cost"]["macs"] > 0 and r["cost"]["macs_ratio"] > 1 for r in latest.values())
    # each trial: one RUNNING line and one COMPLETE line
    assert len(store.lines()) == 2 * len(latest)
    # a second call finds nothing to do
    assert run_search(space, store, fake_trial).ran == 0


def test_the_search_starts_each_rung_with_its_costliest_candidates(store):
    space = SearchSpace.from_config(preset("smoke").replace(seeds=2))
    run_search(space, store, fake_trial)
    started = [record for record in store.lines() if record["status"] == "RUNNING"]
    for rung in {r["rung"] for r in started}:
        macs = [r["cost"]["macs"] for r in started if r["rung"] == rung]
        assert macs == sorted(macs, reverse=True) and len(set(macs)) > 1


def test_a_seed_major_batch_keeps_its_order(store):
    """The scale-up check's batch: every row's seed 0, in the rows' order, before any seed 1."""
    config = preset("smoke").replace(seeds=2, schedule="full")
    space = SearchSpace(config, SearchSpace.from_config(config).entries, seed_major=True)
    run_search(space, store, fake_trial)
    started = [(r["candidate"]["id"], r["seed"]) for r in store.lines() if r["status"] == "RUNNING"]
    assert started == [(entry.id, seed) for seed in (0, 1) for entry in space.entries]


def test_a_failed_trial_is_recorded_and_the_search_goes_on(store):
    space = SearchSpace.from_config(preset("smoke"))
    victim = space.entries[0].id
    run_search(space, store, functools.partial(fake_trial, fail_ids=(victim,)))
    latest = store.latest()
    failed = [r for r in latest.values() if r["status"] == "FAILED"]
    assert [r["candidate"]["id"] for r in failed] == [victim]
    assert "RuntimeError: fake failure" in failed[0]["error"]
    assert sum(r["status"] == "COMPLETE" for r in latest.values()) == len(latest) - 1
    # --retry-failed runs it again (and it fails again: still one record per trial)
    run_search(space, store, functools.partial(fake_trial, fail_ids=(victim,)), retry_failed=True)
    assert store.attempts()[failed[0]["trial_id"]] == 2


def test_three_failures_in_a_row_stop_the_search(store):
    space = SearchSpace.from_config(preset("smoke"))

    def broken(spec):
        raise MemoryError("out of memory")

    with pytest.raises(TrialFailed, match="3 trials failed in a row.*MemoryError: out of memory"):
        run_search(space, store, broken)
    assert [r["status"] for r in store.latest().values()] == ["FAILED"] * 3


def test_crashed_running_trials_are_rerun(store):
    space = SearchSpace.from_config(preset("smoke"))
    first = space.specs(space.entries[:2], 0)
    store.append(TrialRecord.start(first[0], {}))  # left RUNNING by a crash
    outcome = run_search(space, store, fake_trial)
    assert store.latest()[first[0].trial_id]["status"] == "COMPLETE"
    assert store.attempts()[first[0].trial_id] == 2
    assert outcome.ran == space.planned_trials()


# --- predictions, training states and continued promotions (fakes, no Keras) -----------------
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from effscale.grid import checkpoints  # noqa: E402
from effscale.grid.executors import LocalExecutor  # noqa: E402
from effscale.grid.trials import FakeTrainer, fake_val_labels, timing_summary  # noqa: E402

# halving on the smoke grid (6 rows), eta 3, 3 rungs: 6 x 1 epoch, 2 x 3 epochs, 1 x 9 epochs
HALVING = dict(rungs=3, eta=3, epochs=1, seeds=1, early_seeds=1)
IMAGES_PER_EPOCH = 1000


def _halving_space(**changes):
    return SearchSpace.from_config(preset("smoke").replace(**(HALVING | changes)))


def _comparable(store) -> dict:
    """What must not depend on how the search was run: status, score, images, continuation."""
    return {tid: (r["status"], r["metrics"].get("val_accuracy"), r["metrics"].get("images_trained"),
                  r["images_seen"], r["metrics"].get("continued_from"))
            for tid, r in store.latest().items()}


def test_state_round_trip_and_damaged_files_count_as_absent(tmp_path):
    path = checkpoints.checkpoint_path(tmp_path, "a-s0-r0")
    state = checkpoints.TrainState([np.arange(6, dtype=np.float32).reshape(2, 3), np.float32(2.5)],
                                   [np.int64(7)], {"epochs_done": 3, "images_trained": 3000})
    checkpoints.save_state(path, state)
    back = checkpoints.load_state(path)
    assert back.epochs_done == 3 and back.images_trained == 3000
    np.testing.assert_array_equal(back.variables[0], state.variables[0])
    assert float(back.variables[1]) == 2.5 and int(back.optimizer[0]) == 7
    assert not list(path.parent.glob(".*.tmp"))  # the temp file was renamed, not left behind
    # kill -9 halfway through writing a file by hand (the atomic writer never leaves one)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert checkpoints.load_state(path) is None
    path.write_bytes(b"")
    assert checkpoints.load_state(path) is None
    assert checkpoints.load_state(tmp_path / "missing.npz") is None
    assert checkpoints.prune_states(tmp_path) == 1 and not path.exists()


def test_every_complete_trial_leaves_its_predictions_and_the_run_its_labels(store):
    space = SearchSpace.from_config(preset("smoke").replace(seeds=2))
    run_search(space, store, fake_trial)
    labels = checkpoints.load_val_labels(store.run.path)
    np.testing.assert_array_equal(labels, fake_val_labels())
    for tid, record in store.latest().items():
        predictions = checkpoints.load_predictions(store.run.path, tid)
        assert predictions.dtype == np.int16 and predictions.shape == labels.shape
        # the logged score is the one the saved predictions give
        assert record["metrics"]["val_acc"] == pytest.approx(float(np.mean(predictions == labels)))
        assert record["metrics"]["val_accuracy"] == record["metrics"]["val_acc"]
        assert record["metrics"]["seed"] == record["seed"]
        assert record["metrics"]["images_trained"] == 1000 * record["epochs"]


def test_other_validation_labels_are_refused(tmp_path):
    checkpoints.save_val_labels(tmp_path, [0, 1, 2])
    checkpoints.save_val_labels(tmp_path, [0, 1, 2])  # the same again: fine
    with pytest.raises(ValueError, match="other validation labels"):
        checkpoints.save_val_labels(tmp_path, [0, 1, 1])
    with pytest.raises(ValueError, match="one class per validation image"):
        checkpoints.as_predictions([[0, 1]])


def test_promoted_trials_continue_and_count_only_the_images_they_train(store):
    space = _halving_space()
    run_search(space, store, FakeTrainer(last_rung=2, images_per_epoch=IMAGES_PER_EPOCH))
    latest = store.latest()
    by_rung = {r: [t for t in latest.values() if t["rung"] == r] for r in range(3)}
    assert [len(by_rung[r]) for r in range(3)] == [6, 2, 1]
    for rung in (1, 2):
        for record in by_rung[rung]:
            previous = f"{record['candidate']['id']}-s{record['seed']}-r{rung - 1}"
            assert record["metrics"]["continued_from"] == previous
            assert latest[previous]["status"] == "COMPLETE"
    # images trained now: 6x1 + 2x(3-1) + 1x(9-3) epochs = 16 epochs, not 6 + 2x3 + 9 = 21
    assert sum(r["images_seen"] for r in latest.values()) == 16 * IMAGES_PER_EPOCH
    assert by_rung[2][0]["metrics"]["images_trained"] == 9 * IMAGES_PER_EPOCH  # cumulative
    # the search is finished: nothing is left to continue from
    assert not list((store.run.path / checkpoints.CHECKPOINTS).glob("*.npz"))


def test_extra_seeds_at_the_last_rung_train_from_scratch(store):
    space = _halving_space(seeds=2)
    run_search(space, store, FakeTrainer(last_rung=2, images_per_epoch=IMAGES_PER_EPOCH))
    last = {r["seed"]: r for r in store.latest().values() if r["rung"] == 2}
    assert last[0]["metrics"]["continued_from"] == f"{last[0]['candidate']['id']}-s0-r1"
    assert last[0]["images_seen"] == 6 * IMAGES_PER_EPOCH
    # seed 1 ran no earlier rung: it trains all 9 epochs, as in the full schedule
    assert last[1]["metrics"]["continued_from"] is None and last[1]["images_seen"] == 9 * IMAGES_PER_EPOCH


def test_a_damaged_state_means_training_again_from_scratch(store):
    space = _halving_space(rungs=2)
    trainer = FakeTrainer(last_rung=1, images_per_epoch=IMAGES_PER_EPOCH)
    run_search(space, store, trainer, max_failures_in_a_row=99)
    promoted = [r for r in store.latest().values() if r["rung"] == 1]
    # now damage a saved state by hand and rerun only that promoted trial
    victim = promoted[0]
    source = checkpoints.checkpoint_path(store.run.path, victim["metrics"]["continued_from"])
    checkpoints.save_state(source, checkpoints.TrainState([np.array([1])], [np.array([10])], {"epochs_done": 1}))
    source.write_bytes(source.read_bytes()[:40])
    result = trainer.for_run(store.run.path)(TrialRecord.from_dict(victim).spec)
    assert result["metrics"]["continued_from"] is None
    assert result["images_seen"] == victim["epochs"] * IMAGES_PER_EPOCH


def test_timing_summary_gives_the_non_training_share():
    phases = {"build": 1.0, "compile": 0.5, "first_step": 2.0, "train": 16.0, "bn_recal": 0.25, "eval": 0.25,
              "teardown": 0.0}
    trials = {"a": {"status": "COMPLETE", "metrics": {"timing": phases}},
              "b": {"status": "COMPLETE", "metrics": {"timing": dict(phases, train=6.0)}},
              "c": {"status": "FAILED", "metrics": {}},
              "d": {"status": "COMPLETE", "metrics": {}}}
    summary = timing_summary(trials)
    assert summary["trials"] == 2 and summary["seconds"] == pytest.approx(20.0 + 10.0)
    assert summary["non_training_share"] == pytest.approx(8.0 / 30.0)
    assert timing_summary({"d": trials["d"]}) is None


def test_worker_processes_give_the_same_trials_as_one_process(tmp_path):
    space = _halving_space(seeds=2)
    here = TrialStore(RunDir(tmp_path / "here"))
    run_search(space, here, FakeTrainer(last_rung=2))
    executor = LocalExecutor(workers=2, trials_per_worker=3)
    there = TrialStore(RunDir(tmp_path / "workers"))
    run_search(space, there, FakeTrainer(last_rung=2), executor)
    assert _comparable(there) == _comparable(here)
    assert executor._pool.started > 2  # workers were recycled after 3 trials
    assert len(here.latest()) == space.planned_trials()


class _DiesOn(FakeTrainer):
    """A trainer whose process dies (as if killed by the OOM killer) on one candidate."""

    def __init__(self, victim: str, **kwargs):
        super().__init__(**kwargs)
        self.victim = victim

    def for_run(self, run_path):
        bound = _DiesOn(self.victim, last_rung=self.last_rung)
        bound.run_path = str(run_path)
        return bound

    def __call__(self, spec):
        if spec.candidate.id == self.victim:
            os._exit(9)
        return super().__call__(spec)


def test_a_worker_that_dies_fails_its_trial_and_the_search_goes_on(store):
    space = SearchSpace.from_config(preset("smoke"))
    victim = space.entries[1].id
    run_search(space, store, _DiesOn(victim, last_rung=1), LocalExecutor(workers=2))
    latest = store.latest()
    failed = [r for r in latest.values() if r["status"] == "FAILED"]
    assert [r["candidate"]["id"] for r in failed] == [victim]
    assert failed[0]["error"] == "WorkerDied: the worker process running it exited with code 9"
    assert sum(r["status"] == "COMPLETE" for r in latest.values()) == space.planned_trials() - 1


_BALLAST: list = []


class _Hoards(FakeTrainer):
    """Keeps 150 MB per trial alive in its process, as TensorFlow keeps traced graphs."""

    def for_run(self, run_path):
        bound = type(self)(last_rung=self.last_rung)
        bound.run_path = str(run_path)
        return bound

    def __call__(self, spec):
        _BALLAST.append(np.ones(150 * 2**20, dtype=np.uint8))  # ones: the pages are touched
        return super().__call__(spec)


class _LargeOnce(_Hoards):
    """Holds 300 MB from its first trial on (a loaded dataset), and nothing more after."""

    def __call__(self, spec):
        if not _BALLAST:
            _BALLAST.append(np.ones(300 * 2**20, dtype=np.uint8))
        return FakeTrainer.__call__(self, spec)


class _Sleeps:
    """A trial that takes two minutes: long enough to see whether its worker outlives the driver."""

    def __call__(self, spec):
        import time

        time.sleep(120)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc")
def test_a_worker_ends_when_its_driver_is_killed_mid_trial():
    import subprocess
    import sys
    import time
    from pathlib import Path

    driver = (
        "import pickle, time\n"
        "from effscale.grid.workers import _Worker\n"
        "from effscale.grid.search import Candidate, TrialSpec\n"
        "from test_trials import _Sleeps\n"
        "w = _Worker(pickle.dumps(_Sleeps()), threads=1)\n"
        "w.send(TrialSpec(Candidate(1.2, 1.1, 1.15), 'paper', 0, 0, 1))\n"
        "print(w.process.pid, flush=True)\n"
        "time.sleep(120)\n")
    process = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parent)
    worker = int(process.stdout.readline())
    try:
        time.sleep(2)  # the worker is in its trial now
        assert _running(worker)
        process.kill()
        process.wait()
        deadline = time.monotonic() + 10
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(worker), "the worker trained on after its driver was killed"
    finally:
        if _running(worker):
            os.kill(worker, 9)


def test_workers_whose_memory_grows_are_replaced_between_candidates(tmp_path):
    space = _halving_space(seeds=2)
    here = TrialStore(RunDir(tmp_path / "here"))
    run_search(space, here, FakeTrainer(last_rung=2))
    executor = LocalExecutor(workers=2)  # 8 trials per worker: only memory can replace them early
    executor._pool.rss_growth_mb = 100  # each trial keeps 150 MB: the second trial puts a worker over
    there = TrialStore(RunDir(tmp_path / "workers"))
    run_search(space, there, _Hoards(last_rung=2), executor)
    assert _comparable(there) == _comparable(here)  # replacing workers changes no result
    assert executor._pool.replaced_for_memory > 0


class _Remembers:
    """Reports which candidate its process ran before this trial (what a model cache would hold)."""

    last: str | None = None

    def __call__(self, spec):
        before, type(self).last = type(self).last, spec.candidate.id
        return {"metrics": {"val_accuracy": 0.5}, "before": before}


def test_a_free_worker_takes_the_candidate_it_ran_last_first():
    from effscale.grid.workers import WorkerPool

    a, b, c = Candidate(1.0, 1.0, 1.4), Candidate(1.0, 1.4, 1.0), Candidate(2.0, 1.0, 1.0)
    pool, trainer, done = WorkerPool(workers=2), _Remembers(), {}

    def finish(spec, result, error, seconds):
        assert error is None, error
        done[spec.trial_id] = result["before"]

    try:
        pool.run([TrialSpec(a, "grid", 0, 0, 1), TrialSpec(b, "grid", 0, 0, 1)], trainer, lambda s: None, finish)
        # the next rung lists a new candidate first; in the order given, the worker that ran a
        # would take c, and a would land on a worker without its model
        later = [TrialSpec(c, "grid", 0, 1, 3), TrialSpec(a, "grid", 0, 1, 3), TrialSpec(b, "grid", 0, 1, 3)]
        pool.run(later, trainer, lambda s: None, finish)
    finally:
        pool.close()
    assert done[later[1].trial_id] == a.id and done[later[2].trial_id] == b.id
    assert pool.started == 2


def test_a_free_worker_never_starts_a_later_seed_before_every_row_has_the_earlier_one():
    from effscale.grid.workers import _affine

    a, b, c = (Candidate(1.0, 1.0, 1.4), Candidate(1.0, 1.4, 1.0), Candidate(2.0, 1.0, 1.0))
    # seed by seed, a's and b's seed 0 in flight: the worker that ran a takes c's seed 0 first
    groups = [[TrialSpec(c, "grid", 0, 2, 9)], [TrialSpec(a, "grid", 1, 2, 9)], [TrialSpec(b, "grid", 1, 2, 9)]]
    assert _affine(groups, a.id) == 0
    assert _affine(groups[1:], a.id) == 0 and _affine(groups[1:], b.id) == 1  # then its own seed 1


def test_a_worker_that_is_large_from_its_first_trial_but_does_not_grow_is_kept(tmp_path):
    # A big proxy dataset (Imagenette's 160 px images) makes every worker large after its
    # first trial; replacing it for that would restart it before every candidate.
    executor = LocalExecutor(workers=2)
    executor._pool.rss_growth_mb = 100
    store = TrialStore(RunDir(tmp_path / "big"))
    run_search(_halving_space(seeds=2), store, _LargeOnce(last_rung=2), executor)
    assert executor._pool.replaced_for_memory == 0
    assert executor._pool.started == 2


RESUMABLE = """
import sys
from pathlib import Path
from effscale.grid.config import preset
from effscale.grid.executors import LocalExecutor, run_search
from effscale.grid.search import SearchSpace
from effscale.grid.trials import FakeTrainer, TrialStore
from effscale.runs import RunDir
space = SearchSpace.from_config(preset("smoke").replace(rungs=3, eta=3, epochs=1, seeds=2))
run_search(space, TrialStore(RunDir(Path(sys.argv[1]))), FakeTrainer(sleep=0.1, last_rung=2),
           LocalExecutor(workers=int(sys.argv[2])))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_kill_9_then_resume_gives_the_uninterrupted_trials(tmp_path, workers):
    space = _halving_space(seeds=2)
    whole = TrialStore(RunDir(tmp_path / "whole"))
    run_search(space, whole, FakeTrainer(last_rung=2))
    killed = TrialStore(RunDir(tmp_path / "killed"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-c", RESUMABLE, str(killed.run.path), str(workers)], env=env,
                               start_new_session=True)
    deadline = time.monotonic() + 60
    # kill once rung 1 has started: some states saved, some trials in flight
    while time.monotonic() < deadline and not any(r.get("rung") == 1 for r in killed.lines()):
        assert process.poll() is None, "the search ended before it could be killed"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert any(r["status"] == "RUNNING" for r in killed.latest().values())
    assert len(killed.latest()) < space.planned_trials()
    run_search(space, killed, FakeTrainer(last_rung=2))
    assert _comparable(killed) == _comparable(whole)


class _Timed(FakeTrainer):
    """Every trial: 3 s of training steps and 1 s of everything else."""

    def for_run(self, run_path):
        bound = _Timed(last_rung=self.last_rung)
        bound.run_path = str(run_path)
        return bound

    def __call__(self, spec):
        result = super().__call__(spec)
        result["timing"] = {"build": 0.25, "compile": 0.25, "first_step": 0.25, "train": 3.0, "bn_recal": 0.125,
                            "eval": 0.125, "teardown": 0.0}
        return result


def test_the_grid_report_shows_the_non_training_share(store):
    from effscale.grid import report

    space = SearchSpace.from_config(preset("smoke"))
    store.run.write_manifest("grid", space.config.to_dict())
    run_search(space, store, _Timed(last_rung=space.config.n_rungs - 1))
    info = report.build(store.run)[4]
    assert info["timing"]["non_training_share"] == pytest.approx(0.25)
    lines = report.summary_lines(info)
    expected = f"Time: 25% of {4 * space.planned_trials()}s of trial time was not training"
    assert any(line.startswith(expected) for line in lines), lines


class _ReportsOneDnn:
    """A trainer that returns the worker's oneDNN setting, TensorFlow thread count, malloc arenas
    and how many pages a freed-and-reallocated 64 MB block faults in again."""

    def __call__(self, spec):
        return {"onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"), "threads": os.environ.get("TF_NUM_INTRAOP_THREADS"),
                "arenas": os.environ.get("MALLOC_ARENA_MAX"), "refaults": _refaulted_pages(64 << 20)}


def _refaulted_pages(size: int) -> int | None:
    """Minor page faults of writing a ``size``-byte malloc block, after one of the same size was
    written and freed: what one training step pays for a tensor of that size. None without glibc."""
    import ctypes
    import resource

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def write_and_free() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    write_and_free()
    return write_and_free()


def _worker_environment(user_setting: str | None, arenas: str | None = None, mmap_threshold: str | None = None) -> dict:
    import subprocess
    import sys
    from pathlib import Path

    driver = (
        "import json, pickle\n"
        "from effscale.backend import set_defaults\n"
        "set_defaults()\n"  # as the CLI does before it starts workers
        "from effscale.grid.workers import _Worker\n"
        "from effscale.grid.search import Candidate, TrialSpec\n"
        "from test_trials import _ReportsOneDnn\n"
        "w = _Worker(pickle.dumps(_ReportsOneDnn()), threads=1)\n"
        "w.send(TrialSpec(Candidate(1.2, 1.1, 1.15), 'paper', 0, 0, 1))\n"
        "print(json.dumps(w.conn.recv()[1]))\n"
        "w.spec = None\n"
        "w.stop()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", *MALLOC_SETTINGS)}
    if user_setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_setting
    if arenas is not None:
        env["MALLOC_ARENA_MAX"] = arenas
    if mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = mmap_threshold
    done = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, check=True, env=env,
                          cwd=Path(__file__).parent)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN defaults are x86-64 only")
def test_one_thread_workers_run_without_onednn_unless_the_user_asks_for_it():
    settings = ("onednn", "threads")
    assert {k: _worker_environment(None)[k] for k in settings} == {"onednn": "0", "threads": "1"}  # the driver's is "1"
    assert {k: _worker_environment("1")[k] for k in settings} == {"onednn": "1", "threads": "1"}


def test_workers_run_with_one_malloc_arena_unless_the_user_set_it():
    assert _worker_environment(None)["arenas"] == "1"
    assert _worker_environment(None, arenas="4")["arenas"] == "4"


def test_workers_reuse_freed_tensor_memory_instead_of_faulting_it_in_again():
    ours = _worker_environment(None)["refaults"]
    if ours is None:
        pytest.skip("glibc's malloc settings")
    # 64 MB, past glibc's largest dynamic mmap threshold (32 MB): unmapped when freed, so all
    # 16,384 of its pages fault in again on reuse, unless the worker keeps it in the heap
    assert ours < 1000
    assert _worker_environment(None, mmap_threshold=str(128 << 10))["refaults"] > 10_000  # a user's own setting wins
