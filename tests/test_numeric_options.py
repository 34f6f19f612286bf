"""Every numeric option of `evaluate` turns huge, tiny, nan and inf into one line, exit != 0.

`scale` has its own sweep in test_cli_scale.py; grid and transfer sweep theirs.
The dataset does not exist, so a value that parses still ends in a one-line error
before any model is built.
"""

import pytest

ODD = ["0", "-1", "31", "2049", "1000000000", "99999999999999999999999", "nan", "inf", "-inf", "1e3", "abc"]
BASE = ["evaluate", "--variant", "lite0", "--weights", "lite0", "--dataset", "no-such-folder"]
SWEEP = [[*BASE, option, value] for option in ("--image-size", "--batch-size", "--limit") for value in ODD]


@pytest.mark.parametrize("args", SWEEP, ids=lambda args: " ".join(args[-2:]))
def test_evaluate_numbers_are_one_line_errors(run_cli, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(*args)
    errors = [line for line in err.splitlines() if "Error" in line]
    assert code in (1, 2) and len(errors) == 1 and err.splitlines()[-1].startswith("Error: "), err
    assert "Unexpected" not in err and "Traceback" not in err


@pytest.mark.parametrize("option, value, limit", [
    ("--image-size", "99999999999999999999999", "32<=x<=2048"),
    ("--batch-size", "99999999999999999999999", "1<=x<=65536"),
])
def test_evaluate_sizes_that_overflowed_are_refused_by_range(run_cli, option, value, limit):
    code, _, err = run_cli(*BASE, option, value)
    assert code == 2 and f"is not in the range {limit}" in err
