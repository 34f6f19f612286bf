"""The append-only trial log and the search loop with a fake trainer (no Keras)."""

from __future__ import annotations

import functools

import pytest

from effscale.errors import TrialFailed
from effscale.grid.executors import run_search
from effscale.grid.config import preset
from effscale.grid.search import Candidate, SearchSpace, TrialSpec
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
