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
