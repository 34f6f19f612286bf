"""The core must stay importable without Keras/TensorFlow (fast `scale`, `report`)."""

import os
import platform
import subprocess
import sys

import pytest

CORE = ["errors", "net.arch", "net.scaling", "net.cost", "schemas", "scale.report", "scale.render", "console", "runs", "fsutil",
        "backend", "grid.search", "transfer.config", "grid.config", "grid.trials", "grid.report", "transfer.report",
        "plots", "weights.load", "grid.executors", "transfer", "transfer.runner", "transfer.checkpoints",
        "weights.resolve", "weights.pth", "data.records", "data.cifar", "data.folders",
        "data.datasets", "api", "grid", "grid.run", "grid.progress", "grid.stats", "grid.confirm",
        "grid.checkpoints", "grid.workers", "transfer.cache", "transfer.probe", "transfer.prefix_runtime",
        "bench.targets", "bench.stats", "bench.search", "bench.report", "export.artifacts",
        "cli", "cli.options", "cli.scale", "cli.bench", "cli.export", "cli.report", "cli.grid", "cli.transfer", "cli.evaluate"]


def _loaded_heavy(code: str) -> str:
    probe = code + "\nimport sys; print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def test_core_modules_do_not_import_keras():
    imports = "\n".join(f"import effscale.{m}" for m in CORE)
    assert _loaded_heavy(imports) == "[]"


def test_scale_command_does_not_import_keras():
    code = ("from click.testing import CliRunner\nfrom effscale.cli import cli\n"
            "r = CliRunner().invoke(cli, ['scale', '--all', '--format', 'json'])\nassert r.exit_code == 0, r.output")
    assert _loaded_heavy(code) == "[]"


def test_the_grid_driver_does_not_import_keras():
    """The driver loads the proxy data, writes the manifest and ships the trainer to its
    workers; importing Keras there would cost it ~0.7 GB of the search's memory."""
    code = ("import pickle\nfrom effscale.grid.config import preset\nfrom effscale.grid.proxy import ProxyTrainer\n"
            "t = ProxyTrainer.load(preset('smoke').replace(dataset='synthetic', limit_train=64, limit_val=32))\n"
            "assert t.backend == 'tensorflow' and t.num_classes == 10 and t.dataset_summary\n"
            "pickle.dumps(t)")
    assert _loaded_heavy(code) == "[]"


@pytest.mark.slow
def test_tensorflow_start_up_lines_stay_off_the_console():
    code = ("from effscale.backend import set_defaults, native_startup_output\nset_defaults()\nimport keras\n"
            "import sys\nsys.stdout.write(''.join(native_startup_output))")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert "absl::InitializeLog" not in done.stderr and "oneDNN" not in done.stderr, done.stderr
    assert "absl::InitializeLog" in done.stdout  # kept, for the run's effscale.log


def _onednn_after_set_defaults(user_setting: str | None, check_tensorflow: bool) -> str:
    code = "from effscale.backend import set_defaults\nset_defaults()\nimport os\n"
    if check_tensorflow:
        code += ("import tensorflow\nfrom tensorflow.python.util import _pywrap_util_port\n"
                 "print(_pywrap_util_port.IsMklEnabled())")
    else:
        code += "import sys\nprint(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), 'tensorflow' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user_setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_setting
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return done.stdout.strip()


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the default is x86-64 only")
def test_onednn_kernels_are_asked_for_unless_the_user_says_otherwise():
    assert _onednn_after_set_defaults(None, check_tensorflow=False) == "1 False"  # set before, not by, a TF import
    assert _onednn_after_set_defaults("0", check_tensorflow=False) == "0 False"


@pytest.mark.slow
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the default is x86-64 only")
def test_tensorflow_runs_onednn_kernels_by_default_even_on_avx2_cpus():
    assert _onednn_after_set_defaults(None, check_tensorflow=True) == "True"
    assert _onednn_after_set_defaults("0", check_tensorflow=True) == "False"


def test_modules_stay_small():
    """A module over 400 lines (a command module over 120) is doing more than one job."""
    from conftest import ROOT

    package = ROOT / "effscale"
    too_long = []
    for path in sorted(package.rglob("*.py")):
        limit = 120 if path.parent.name == "cli" and path.name != "__init__.py" else 400
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} > {limit}")
    assert not too_long
