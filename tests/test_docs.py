"""Every command has help text and documentation; generated docs are current."""

import re
from pathlib import Path

import pytest

from effscale.cli import COMMANDS, cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_command_has_help_and_docs(name):
    command = cli.get_command(None, name)
    assert command.help and len(command.help.strip()) > 20
    for param in command.params:
        if param.param_type_name == "option" and not param.hidden:
            assert param.help, f"effscale {name} {param.opts[0]} has no help text"
    page = ROOT / "docs" / f"{name}.md"
    assert page.exists(), f"docs/{name}.md is missing"
    assert f"effscale {name}" in page.read_text()


def test_cli_reference_is_current():
    from cogapp import Cog

    status = Cog().main(["cog", "--check", str(ROOT / "docs" / "cli.md")])
    assert status == 0, "docs/cli.md is stale: run `cog -r docs/cli.md`"


def test_readme_test_command_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"^(python -m pip install .*pytest.*)$", readme, flags=re.M)
    assert len(commands) == 1 and commands[0] in ci


def test_changelog_has_unreleased_section():
    assert (ROOT / "CHANGELOG.md").read_text().splitlines()[4] == "## Unreleased"
