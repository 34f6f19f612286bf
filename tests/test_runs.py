"""RunDir: the one resume check shared by grid and transfer, and the paths it owns."""

import pytest

from effscale.errors import RunDirError
from effscale.runs import RunDir

SETTINGS = {"epochs": 3, "preset": "smoke", "recipe": "default", "lr": 0.001, "beta": [1.0, 1.5],
            "weights": None}


@pytest.fixture
def run(tmp_path):
    run = RunDir(tmp_path / "runs" / "x")
    run.path.mkdir(parents=True)
    run.write_manifest("grid", SETTINGS)
    return run


def test_identical_settings_resume(run):
    run.check_resume(dict(SETTINGS))


def test_tuple_equals_the_list_it_was_stored_as(run):
    run.check_resume(SETTINGS | {"beta": (1.0, 1.5)})


@pytest.mark.parametrize("key, new, expected", [
    ("epochs", 5, "was created with epochs=3; this command asks for epochs=5."),
    ("preset", "cpu", "was created with preset=smoke; this command asks for preset=cpu."),
    ("recipe", "seed", "was created with recipe=default; this command asks for recipe=seed."),
    ("weights", "imagenet", "was created with weights=null; this command asks for weights=imagenet."),
    ("beta", [1.0, 1.4], "was created with beta=[1.0, 1.5]; this command asks for beta=[1.0, 1.4]."),
])
def test_a_changed_setting_is_named_on_one_line(run, key, new, expected):
    with pytest.raises(RunDirError) as info:
        run.check_resume(SETTINGS | {key: new})
    message = str(info.value)
    assert "\n" not in message
    assert message == (f"Run dir {run.path} {expected} Resume without changing settings, or pass a new --run-dir.")


def test_only_the_first_changed_setting_is_named(run):
    with pytest.raises(RunDirError, match="epochs=3; this command asks for epochs=4") as info:
        run.check_resume(SETTINGS | {"epochs": 4, "lr": 0.5})
    assert "lr" not in str(info.value)


def test_added_and_dropped_settings_are_changes(run):
    with pytest.raises(RunDirError, match="was created with no seed setting; this command asks for seed=7"):
        run.check_resume(SETTINGS | {"seed": 7})
    dropped = dict(SETTINGS)
    del dropped["preset"]
    with pytest.raises(RunDirError, match="was created with preset=smoke; this command asks for no preset setting"):
        run.check_resume(dropped)


def test_check_manifest_refuses_another_command(run):
    with pytest.raises(RunDirError, match="is an effscale 'grid' run, not a 'transfer' run"):
        run.check_manifest("transfer", SETTINGS)
    assert run.check_manifest("grid", SETTINGS)["config"] == SETTINGS


def test_resume_without_a_manifest_says_so(tmp_path):
    with pytest.raises(RunDirError, match="is not an effscale run directory"):
        RunDir(tmp_path).check_resume(SETTINGS)


def test_paths_live_under_the_run_dir(tmp_path):
    run = RunDir(tmp_path)
    assert run.state_path == tmp_path / "checkpoints" / "state.json"
    assert run.trials_path == tmp_path / "trials.jsonl"
    assert run.predictions_path("t1") == tmp_path / "trials" / "t1" / "predictions.npy"
    assert run.pending_checkpoint(4) == tmp_path / "checkpoints" / ".epoch-4.keras"
    report = run.report("ranking.csv")
    assert report == tmp_path / "reports" / "ranking.csv" and report.parent.is_dir()


def test_path_given_as_string_is_a_path(tmp_path):
    assert RunDir(str(tmp_path)).manifest_path == tmp_path / "manifest.json"
