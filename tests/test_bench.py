"""effscale bench / scale --target-latency: statistics, the phi search and bad input."""

import math

import numpy as np
import pytest

from effscale.bench.search import parse_latency_ms, search_phi
from effscale.bench.stats import bootstrap_corr, corr, summarize, summarize_blocks
from effscale.bench.targets import resolve_targets
from effscale.errors import ConfigError
from effscale.net.arch import NetworkSpec, StageSpec


def write_tiny_variant(path):
    """A two-stage network: builds and traces in a second, so slow tests stay short."""
    import json

    net = NetworkSpec(stem_filters=8, stages=(StageSpec(3, 1, 8, 8, 1, 1), StageSpec(3, 2, 8, 16, 2, 2)),
                      head_filters=32, resolution=32, dropout_rate=0.0, drop_connect_rate=0.0)
    path.write_text(json.dumps({"schema": "effscale/variant@1", "name": "tiny", "network": net.to_dict()}))
    return path


def test_summarize_percentiles_in_ms():
    s = summarize([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["min_ms"] == pytest.approx(1.0) and s["runs"] == 100


def test_p50_is_the_median_of_block_medians_so_one_slow_block_does_not_move_it():
    fast = [0.010, 0.011, 0.012]
    slow = [0.040, 0.041, 0.042]  # a slow spell of the machine
    s = summarize_blocks([fast, fast, slow, fast, [0.0105, 0.0115, 0.0125]])
    assert s["p50_ms"] == pytest.approx(11.0)
    assert s["p50_all_ms"] == pytest.approx(11.5)  # the pooled median is pulled up by the slow block
    assert s["blocks"] == 5 and s["runs"] == 15
    assert s["spread_pct"] == pytest.approx((41.0 - 11.0) / 11.0 * 100)
    steady = summarize_blocks([fast] * 4)
    assert steady["spread_pct"] == 0.0 and steady["p50_ms"] == pytest.approx(11.0)


def test_block_sizes_cover_every_run():
    from effscale.bench.interleave import block_sizes

    assert block_sizes(50, 5) == [10] * 5
    assert block_sizes(32, 5) == [7, 7, 6, 6, 6]
    assert sum(block_sizes(31, 4)) == 31


def test_blocks_interleave_across_targets_and_keep_their_gap(monkeypatch):
    import time

    from effscale.bench import interleave
    from effscale.bench.measure import BenchSettings

    calls = []

    class FakeSession:
        def __init__(self, target, settings):
            self.name = target

        def start(self):
            calls.append(("start", self.name, time.monotonic()))

        def block(self, n):
            calls.append(("block", self.name, time.monotonic(), n))

        def finish(self):
            return {"name": self.name}

    monkeypatch.setattr(interleave, "Session", FakeSession)
    monkeypatch.setattr(interleave, "set_threads", lambda threads: {"threads": 0})
    settings = BenchSettings(runs=31, blocks=3, block_gap_s=0.05)
    records = interleave.measure_all(["a", "b"], settings, isolated=False)
    assert [r["name"] for r in records] == ["a", "b"]
    assert [c[:2] for c in calls[:2]] == [("start", "a"), ("start", "b")]  # all loaded before any timing
    blocks = [c for c in calls if c[0] == "block"]
    assert [c[1] for c in blocks] == ["a", "b"] * 3
    assert [c[3] for c in blocks if c[1] == "a"] == [11, 10, 10]
    starts = [c[2] for c in blocks if c[1] == "a"]
    # the gap is kept between the bench's own start marks; the fake's marks come microseconds
    # (or, preempted on a busy machine, milliseconds) later, so allow 20 ms: without the gap
    # these starts would be microseconds apart
    assert all(later - earlier >= 0.03 for earlier, later in zip(starts, starts[1:]))


def test_spearman_sees_monotone_pearson_sees_curvature():
    x = np.arange(1, 10, dtype=float)
    y = np.exp(x)
    assert corr(x, y, "spearman") == pytest.approx(1.0)
    assert corr(x, y, "pearson") < 0.9
    boot = bootstrap_corr(x, x + np.sin(7 * x), "pearson", n_boot=500)
    assert boot["lo"] <= boot["r"] <= boot["hi"] and boot["n"] == 9


@pytest.mark.parametrize("text,ms", [("30ms", 30.0), ("0.03s", 30.0), ("2500us", 2.5), ("45", 45.0), (" 7.5 MS ", 7.5)])
def test_parse_latency(text, ms):
    assert parse_latency_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["fast", "30 minutes", "-3ms", "0ms"])
def test_parse_latency_rejects(text):
    with pytest.raises(ConfigError):
        parse_latency_ms(text)


def test_search_finds_largest_fitting_phi_with_few_measurements():
    calls = []

    def latency(phi):  # 10 ms at phi=0, doubling per unit of phi
        calls.append(phi)
        return 10 * 2**phi

    found = search_phi(30.0, latency)
    # 10 * 2^phi <= 30  <=>  phi <= log2(3) = 1.585: the 0.25 grid gives 1.5, and 1.75 is over.
    assert found["phi"] == 1.5 and found["next_phi"] == 1.75
    assert found["latency_ms"] <= 30 < found["next_latency_ms"]
    assert len(calls) == len(set(calls)) <= 8  # doubling + bisection, not a scan of 33 points


def test_search_stops_at_max_phi():
    found = search_phi(1e9, lambda phi: 1.0 + phi, max_phi=2.0)
    assert found["phi"] == 2.0 and found["next_phi"] is None


def test_target_below_smallest_model():
    with pytest.raises(ConfigError, match=r"below the smallest model's latency \(phi=0: 12.0 ms"):
        search_phi(5.0, lambda phi: 12.0)


def test_targets_carry_arithmetic_cost():
    b0, phi1 = resolve_targets(variants=["b0"], phis=[1.0])
    assert b0.cost()["macs"] == pytest.approx(0.39e9, rel=0.02)
    assert phi1.name == "phi1" and phi1.cost()["acts"] > b0.cost()["acts"]
    assert resolve_targets(variants=["b0"], resolution=128)[0].cost()["resolution"] == 128


def test_bench_errors_are_one_line(run_cli, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"x" * 64)
    (tmp_path / "bad.tflite").write_bytes(b"\x00" * 64)
    cases = [
        (("bench", str(tmp_path / "model.pt")), "Error: unknown artifact type '.pt'"),
        (("bench", str(tmp_path / "bad.tflite")), "Error: " + str(tmp_path / "bad.tflite") + " is not a TFLite"),
        (("bench", str(tmp_path)), "Error: " + str(tmp_path) + " is a directory without saved_model.pb"),
        (("bench",), "Error: nothing to measure"),
        (("bench", "--variant", "b9"), "Error: "),
        (("bench", "--variant", "b0", "--plot", str(tmp_path / "no" / "p.png")), "Error: output directory"),
    ]
    for args, start in cases:
        code, out, err = run_cli(*args)
        assert code != 0, args
        assert err.startswith(start), (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err


def test_scale_target_latency_bad_input(run_cli):
    code, _, err = run_cli("scale", "--target-latency", "soon")
    assert code == 1 and err.startswith("Error: latency 'soon' is not a duration")
    code, _, err = run_cli("scale", "--phi", "1", "--target-latency", "30ms")
    assert code == 2 and "--phi and --target-latency cannot be combined" in err


@pytest.mark.slow
def test_bench_measures_a_small_model(tmp_path):
    import json

    plot = tmp_path / "lat.png"
    tiny = str(write_tiny_variant(tmp_path / "tiny.json"))
    import subprocess
    import sys

    # A fresh process: --threads can only be applied before TensorFlow's first op, and other
    # tests in this pytest process may have run one already.
    proc = subprocess.run([sys.executable, "-m", "effscale", "bench", "--variant", tiny, "--resolution", "48",
                           "--same-process", "--runs", "30", "--throughput-batch", "4", "--throughput-runs", "2",
                           "--train", "--train-batch", "2", "--threads", "1", "--format", "json", "--plot", str(plot)],
                          capture_output=True, text=True, timeout=600)
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 0, err
    record = json.loads(out)[0]["records"][0]
    assert record["name"] == "tiny@48" and record["resolution"] == 48 and record["runs"] == 30
    assert record["blocks"] == 5 and len(record["block_p50_ms"]) == 5
    assert 0 < record["min_ms"] <= record["p50_ms"] <= record["p90_ms"]
    assert record["trace_s"] > 0 and record["images_per_s"] > 0 and record["train_step_ms"] > 0
    assert record["mem_mb"] > 0 and record["tf_intra_op"] == 1
    assert plot.stat().st_size > 1000
    assert not math.isnan(record["p50_ms"])


@pytest.mark.slow
def test_isolated_bench_keeps_tensorflow_notices_off_the_console(tmp_path):
    """The default path measures in a spawned process; TensorFlow's C++ start-up and
    first-op notices from that process must not interleave with the table."""
    import os
    import subprocess
    import sys

    tiny = str(write_tiny_variant(tmp_path / "tiny.json"))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "effscale", "bench", "--variant", tiny, "--resolution", "32",
                           "--runs", "30", "--throughput-batch", "0", "--threads", "1"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = proc.stdout + proc.stderr
    assert "tiny@32" in proc.stdout
    assert "absl::InitializeLog" not in both and "oneDNN" not in both


@pytest.mark.slow
def test_same_process_threads_after_tensorflow_started_is_reported_not_silent(tmp_path):
    """TF fixes its thread pools at its first op; a later --threads cannot apply, and the
    console must say so instead of printing the requested count as if it were in force."""
    import subprocess
    import sys

    tiny = str(write_tiny_variant(tmp_path / "tiny.json"))
    script = ("import sys, tensorflow as tf; tf.constant(1.0) + 1.0\n"
              "from effscale.cli import main\n"
              f"sys.argv = ['effscale', 'bench', '--variant', {tiny!r}, '--resolution', '32', '--same-process',"
              " '--runs', '30', '--blocks', '1', '--throughput-batch', '0', '--threads', '1']\n"
              "main()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    both = proc.stdout + proc.stderr
    assert "--threads 1 was not applied" in both
    assert "threads 1/" not in both


def test_set_threads_says_whether_the_request_took_effect():
    import tensorflow as tf

    from effscale.bench.measure import set_threads

    tf.constant(1.0) + 1.0  # TF's pools exist from here on
    in_force = tf.config.threading.get_intra_op_parallelism_threads()
    assert set_threads(in_force + 3)["threads_applied"] is False
    assert set_threads(None)["threads_applied"] is True
