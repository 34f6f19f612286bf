import json

import pytest

from effscale.schemas import read_variant_file, write_coefficients
from effscale.net.scaling import ScalingCoefficients, compound, scale_network

JSON_KEYS = {"name", "phi", "width", "depth", "resolution", "dropout", "params", "flops", "stages"}

# (args, exit code, exact stderr)
BAD_INPUT = [
    (["scale", "--phi", "-1"], 2,
     "Error: Invalid value for '--phi': -1.0 is not in the range x>=0.0. (see 'effscale scale --help')\n"),
    (["scale", "--phi", "abc"], 2,
     "Error: Invalid value for '--phi': 'abc' is not a valid number. (see 'effscale scale --help')\n"),
    (["scale", "--phi", "25"], 1,
     "Error: phi25: phi 25 exceeds the sanity limit 20 (see docs/scale.md); use a smaller phi or smaller "
     "coefficients\n"),
    (["scale", "--phi", "1", "--alpha", "1", "--beta", "1", "--gamma", "1"], 1,
     "Error: alpha*beta^2*gamma^2 = 1 <= 1: scaling would not grow the network; raise at least one "
     "coefficient above 1\n"),
    (["scale", "--variant", "b9"], 1,
     "Error: unknown variant 'b9'; choose one of b0, b1, b2, b3, b4, b5, b6, b7, lite0, lite1, lite2, lite3, lite4\n"),
    (["scale", "--budget", "1"], 2,
     "Error: Invalid value for '--budget': 1.0 is not in the range x>1.0. (see 'effscale scale --help')\n"),
    (["scale", "--phi", "1", "--all"], 2,
     "Error: --phi and --all cannot be combined; pass one of them (see 'effscale scale --help')\n"),
    (["scale", "--all", "--output", "x.json"], 2,
     "Error: --output writes one variant; use it with --phi or --variant (see 'effscale scale --help')\n"),
    # phi**coefficient overflowed before the sanity limit was compared
    (["scale", "--phi", "1e9"], 1,
     "Error: phi1e+09: phi 1e+09 exceeds the sanity limit 20 (see docs/scale.md); use a smaller phi or smaller "
     "coefficients\n"),
    # an empty name used to print every variant and exit 0
    (["scale", "--variant", ""], 2,
     "Error: Invalid value for '--variant': give a variant name (b0-b7, lite0-lite4), or leave --variant out "
     "(see 'effscale scale --help')\n"),
    (["scale", "--phi", "nan"], 2,
     "Error: Invalid value for '--phi': 'nan' is not a finite number. (see 'effscale scale --help')\n"),
    (["scale", "--phi", "2", "--budget", "1e300"], 1,
     "Error: budget 1e+300 exceeds the sanity limit 100 (see docs/scale.md); the paper uses 2\n"),
]

HUGE_TINY_ODD = ["1e308", "1e9", "25", "1e-300", "0", "-1e-300", "nan", "inf", "-inf", "1e400"]
# Options whose value is only a problem once scaled: alpha**phi, budget**phi, ...
NUMERIC_SWEEP = [
    *[["scale", "--phi", v] for v in HUGE_TINY_ODD],
    *[["scale", "--phi", "19", f"--{axis}", v] for axis in ("alpha", "beta", "gamma") for v in HUGE_TINY_ODD],
    *[["scale", "--all", f"--{axis}", v] for axis in ("alpha", "beta", "gamma") for v in ("1e200", "1", "nan")],
    *[["scale", "--phi", "19.9", "--budget", v] for v in HUGE_TINY_ODD],
    ["scale", "--phi", "20", "--alpha", "1.0001", "--beta", "1.0001", "--gamma", "1.0001"],
    ["scale", "--variant", "b1", "--beta", "1", "--gamma", "1.5"],
]


@pytest.mark.parametrize("args", NUMERIC_SWEEP, ids=" ".join)
def test_numeric_options_never_crash(run_cli, args):
    code, out, err = run_cli(*args)
    if code == 0:
        assert out and not err
    else:
        assert code in (1, 2) and err.startswith("Error: ") and err.count("\n") == 1, err


@pytest.mark.parametrize("args,code,stderr", BAD_INPUT)
def test_bad_input_is_one_line(run_cli, args, code, stderr, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exit_code, out, err = run_cli(*args)
    assert (exit_code, err) == (code, stderr)


def test_from_file_errors(run_cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, _, err = run_cli("scale", "--phi", "1", "--from", str(bad))
    assert code == 1 and err.startswith(f"Error: coefficients file {bad} is not valid JSON")
    code, _, err = run_cli("scale", "--phi", "1", "--from", str(tmp_path / "missing.json"))
    assert code == 1 and "No such file or directory" in err and err.count("\n") == 1
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"alpha": "big", "beta": 1.1, "gamma": 1.1}))
    code, _, err = run_cli("scale", "--phi", "1", "--from", str(wrong))
    assert code == 1 and "'alpha' must be a finite number" in err
    code, _, err = run_cli("scale", "--phi", "1", "--from", str(tmp_path))
    assert code == 1 and "without best.json" in err


def test_phi3_json(run_cli):
    code, out, _ = run_cli("scale", "--phi", "3", "--format", "json")
    assert code == 0
    (record,) = json.loads(out)
    assert JSON_KEYS <= record.keys()
    assert record["resolution"] == 344 and record["depth"] == pytest.approx(1.728)
    assert record["flops_vs_target"] == pytest.approx(record["flops_vs_base"] / 8)
    assert record["nearest"] == "b4"
    assert len(record["stages"]) == 7


def test_phi3_table_mentions_the_nearest_official(run_cli):
    code, out, _ = run_cli("scale", "--phi", "3")
    assert code == 0
    assert "nearest official: b4" in out and "16,462,143" in out and "Stages" in out


def test_all_csv_has_eight_rows_with_implied_phi(run_cli):
    code, out, _ = run_cli("scale", "--all", "--format", "csv")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 9
    header = lines[0].split(",")
    assert {"phi_depth", "phi_width", "phi_resolution", "formula_flops"} <= set(header)
    b1 = dict(zip(header, lines[2].split(",")))
    assert b1["name"] == "b1" and float(b1["phi_width"]) == 0.0 and b1["params"] == "7856239"


def test_markdown_and_variant(run_cli):
    code, out, _ = run_cli("scale", "--variant", "b3", "--format", "markdown")
    assert code == 0 and out.startswith("| name") and "| b3 " in out and "12320535" in out


def test_output_file_round_trips_to_the_same_network(run_cli, tmp_path):
    target = tmp_path / "phi2.json"
    code, _, err = run_cli("scale", "--phi", "2", "--output", str(target))
    assert code == 0 and f"wrote {target}" in err
    name, network = read_variant_file(target)
    assert name == "phi2" and network == scale_network(compound(2))


def test_from_run_dir_uses_its_coefficients(run_cli, tmp_path):
    write_coefficients(tmp_path / "best.json", ScalingCoefficients(1.3, 1.05, 1.1), budget=2.0)
    code, out, _ = run_cli("scale", "--phi", "2", "--from", str(tmp_path), "--format", "json")
    (record,) = json.loads(out)
    assert code == 0 and (record["alpha"], record["beta"], record["gamma"]) == (1.3, 1.05, 1.1)
    assert record["depth"] == pytest.approx(1.69)
    # An explicit flag overrides the file.
    _, out, _ = run_cli("scale", "--phi", "2", "--from", str(tmp_path), "--alpha", "1.2", "--format", "json")
    assert json.loads(out)[0]["alpha"] == 1.2


def test_from_uses_the_budget_the_grid_recorded(run_cli, tmp_path):
    write_coefficients(tmp_path / "best.json", ScalingCoefficients(1.2, 1.15, 1.2), budget=3.0)
    code, out, _ = run_cli("scale", "--phi", "2", "--from", str(tmp_path), "--format", "json")
    (record,) = json.loads(out)
    assert code == 0 and record["budget"] == 3.0 and record["budget_target"] == pytest.approx(9.0)
    assert record["flops_vs_target"] == pytest.approx(record["flops_vs_base"] / 9.0)
    # An explicit --budget still wins over the file.
    _, out, _ = run_cli("scale", "--phi", "2", "--from", str(tmp_path), "--budget", "2", "--format", "json")
    assert json.loads(out)[0]["budget_target"] == pytest.approx(4.0)
    # Without --from the paper's budget of 2 applies.
    _, out, _ = run_cli("scale", "--phi", "2", "--format", "json")
    assert json.loads(out)[0]["budget"] == 2.0


def test_from_file_with_a_broken_budget_is_one_line(run_cli, tmp_path):
    path = tmp_path / "coefficients.json"
    path.write_text(json.dumps({"alpha": 1.2, "beta": 1.1, "gamma": 1.15, "budget": "three"}))
    code, _, err = run_cli("scale", "--phi", "1", "--from", str(path))
    assert code == 1 and err == f"Error: {path}: 'budget' must be a finite number, got 'three'\n"


def test_lite_family(run_cli):
    code, out, _ = run_cli("scale", "--all", "--family", "lite", "--format", "json")
    names = [r["name"] for r in json.loads(out)]
    assert code == 0 and names == ["lite0", "lite1", "lite2", "lite3", "lite4"]


@pytest.mark.slow
def test_build_checks_params(run_cli):
    code, _, err = run_cli("scale", "--phi", "0.5", "--build")
    assert code == 0 and "= arithmetic count" in err
