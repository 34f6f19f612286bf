"""Shared fixtures. Markers are registered here, as Keras's root conftest does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: builds Keras models or trains; deselected by default")


def shared_data_dir() -> Path:
    return Path(os.environ.get("EFFSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    """A file from ../shared/data; skips when absent, except on CI where it must exist."""
    path = shared_data_dir() / name
    if not path.exists():
        if os.environ.get("EFFSCALE_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"shared data file {path} is missing (required on CI)")
        pytest.skip(f"shared data file {path} not found (set EFFSCALE_SHARED_DATA)")
    return path


def on_ci() -> bool:
    """CI (`.ci/run` sets EFFSCALE_REQUIRE_SHARED_DATA=1; hosted CI sets CI) installs every optional
    backend the project claims to support, so a missing one there is a failure, not a skip."""
    return os.environ.get("EFFSCALE_REQUIRE_SHARED_DATA") == "1" or os.environ.get("CI", "").lower() in ("1", "true")


def require(module: str, extra: str = "ci", load: bool = True):
    """Import an optional backend (ray, jax, torch): skip without it on a user's machine,
    fail on CI, where `pip install -e .[cpu,test,ci]` must have installed it. ``load=False``
    only checks that it is installed (for tests that use it in a subprocess)."""
    import importlib
    import importlib.util

    try:
        if not load:
            if importlib.util.find_spec(module) is None:
                raise ImportError(f"No module named {module!r}")
            return None
        return importlib.import_module(module)
    except ImportError as exc:
        message = f"{module} is not installed ({exc}); pip install -e '.[{extra}]'"
        if on_ci():
            pytest.fail(f"{message} - CI must run these tests, not skip them")
        pytest.skip(message)


@pytest.fixture
def run_cli():
    """Invoke the CLI through its real error handling; returns (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from effscale.cli import cli

    def invoke(*args: str):
        runner = CliRunner()
        result = runner.invoke(cli, list(args), prog_name="effscale", catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    return invoke
