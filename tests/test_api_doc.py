"""docs/api.md's example runs as written and prints what the page says it prints."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT

import effscale

DOC = ROOT / "docs" / "api.md"


def _blocks() -> tuple[str, str]:
    text = DOC.read_text(encoding="utf-8")
    code = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    printed = re.search(r"It prints.*?```text\n(.*?)```", text, re.S).group(1)
    return code, printed


def test_the_api_names_resolve_without_keras():
    probe = ("import sys, effscale\nnames = [effscale.derive, effscale.official, effscale.grid.run, "
             "effscale.transfer.run, effscale.GridConfig, effscale.TransferConfig, effscale.ScalingCoefficients]\n"
             "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_evaluate_is_callable_from_the_package():
    assert callable(effscale.evaluate) and effscale.evaluate.__name__ == "effscale.evaluate"


def test_api_example_runs_and_prints_what_the_doc_shows(tmp_path):
    code, printed = _blocks()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed
    assert not list(tmp_path.iterdir())  # the example cleans up after itself
