"""effscale export: bad input is a one-line error; artifacts run and agree with Keras."""

import json

import numpy as np
import pytest

from conftest import shared_file
from effscale.export.artifacts import ArtifactError, kind_of, output_kind
from effscale.export.verify import compare
from test_bench import write_tiny_variant


def _one_line_error(err: str, start: str) -> None:
    assert err.startswith(start), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_output_kind_from_suffix_or_format(tmp_path):
    assert output_kind(tmp_path / "m.tflite", None) == "tflite"
    assert output_kind(tmp_path / "m.onnx", None) == "onnx"
    assert output_kind(tmp_path / "saved", None) == "savedmodel"
    assert output_kind(tmp_path / "m.bin", "tflite") == "tflite"
    with pytest.raises(ArtifactError, match="unknown artifact type '.pt'"):
        output_kind(tmp_path / "m.pt", None)


def test_kind_of_recognises_files_and_refuses_corrupt_ones(tmp_path):
    good = tmp_path / "ok.tflite"
    good.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 32)
    assert kind_of(good) == "tflite"
    (tmp_path / "sm").mkdir()
    (tmp_path / "sm" / "saved_model.pb").write_bytes(b"x")
    assert kind_of(tmp_path / "sm") == "savedmodel"
    bad = tmp_path / "bad.keras"
    bad.write_text("not a zip")
    with pytest.raises(ArtifactError, match="not a .keras archive"):
        kind_of(bad)


def test_corrupt_artifacts_fail_to_load_with_one_line(tmp_path):
    from effscale.export.runtimes import OnnxRunner, TFLiteRunner

    tfl = tmp_path / "trunc.tflite"
    tfl.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4)  # right magic, garbage body
    with pytest.raises(ArtifactError, match="cannot load TFLite model"):
        TFLiteRunner(tfl)
    onnx = tmp_path / "junk.onnx"
    onnx.write_bytes(b"\x08\x07garbage-not-a-protobuf-model" * 8)
    with pytest.raises(ArtifactError, match="cannot load ONNX model"):
        OnnxRunner(onnx)


def test_compare_counts_agreement_and_largest_difference():
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    cand = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.3, 0.7]])
    result = compare(ref, cand, labels=np.array([0, 1, 0, 0]))
    assert result["agreement"] == 0.75 and result["max_abs_diff"] == pytest.approx(0.2)
    assert result["keras_top1"] == 0.75 and result["artifact_top1"] == 0.5
    assert result["top1_difference"] == -0.25


def test_paired_interval_reflects_only_images_where_models_differ():
    from effscale.export.verify import paired_difference_ci

    same = np.array([1, 0, 1, 1] * 100, dtype=bool)
    assert paired_difference_ci(same, same) == [0.0, 0.0]  # identical answers: no noise at all
    worse = same.copy()
    worse[:20] = False  # 15 images flip from right to wrong: -3.75 points
    lo, hi = paired_difference_ci(worse, same)
    assert lo < -0.0375 < hi < 0  # an honest interval around the true drop, excluding 0
    # An unpaired view (two binomials of 400) would be about +-6 points wide; paired is far tighter.
    assert hi - lo < 0.05


def test_export_bad_input(run_cli, tmp_path):
    chans = tmp_path / "gray.npy"
    np.save(chans, np.zeros((4, 32, 32, 1), dtype=np.uint8))
    out = str(tmp_path / "m.tflite")
    cases = [
        (("export", "--variant", "b0", "-o", str(tmp_path / "missing" / "m.tflite")), 1,
         f"Error: output directory {tmp_path / 'missing'} does not exist"),
        (("export", "--variant", "b0", "-o", str(tmp_path / "m.pt")), 1, "Error: unknown artifact type '.pt'"),
        (("export", "--variant", "b0", "-o", out, "--quantize", "int8"), 2, "Error: --quantize int8 needs --calibration"),
        (("export", "--variant", "b0", "-o", str(tmp_path / "m.onnx"), "--quantize", "float16"), 2,
         "Error: --quantize float16 applies to TFLite only"),
        (("export", "-o", out), 2, "Error: pass MODEL"),
        (("export", "--variant", "b0", "-o", out, "--quantize", "int8", "--calibration", str(chans)), 1,
         f"Error: calibration data {chans} has shape (4, 32, 32, 1) (1 channels)"),
    ]
    for args, code, start in cases:
        got, _, err = run_cli(*args)
        assert got == code, (args, err)
        _one_line_error(err, start)


@pytest.mark.parametrize("fmt, name", [("savedmodel", "saved"), ("tflite", "m.tflite")])
def test_a_nested_backbone_exports_in_inference_mode(tmp_path, fmt, name):
    """A transfer model (backbone nested, drop-connect and dropout): Keras's model.export
    left both active in the artifact; the artifact must compute what predict() does."""
    import dataclasses

    from effscale.backend import set_defaults

    set_defaults()
    import keras

    from effscale.export.convert import export
    from effscale.export.runtimes import runner_for
    from effscale.transfer.config import TransferConfig
    from effscale.transfer.model import build_transfer_model
    from test_transfer_train import tiny_network

    keras.utils.set_random_seed(0)
    spec = dataclasses.replace(tiny_network(8), drop_connect_rate=0.5)
    model, _ = build_transfer_model(TransferConfig(dropout=0.5), spec, (32, 32, 3), 10, 48)
    head = model.get_layer("predictions")
    head.set_weights([np.random.default_rng(0).normal(size=w.shape).astype(np.float32) for w in head.get_weights()])
    x = np.random.default_rng(1).integers(0, 256, (6, 32, 32, 3)).astype(np.float32)
    path = export(model, tmp_path / name, fmt)
    got = runner_for(fmt, path).predict(x, 3)
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.slow
def test_tflite_and_onnx_agree_with_keras_and_bench_reads_them(run_cli, tmp_path):
    images = str(shared_file("imagenette-val-500.tar.gz"))
    tiny = str(write_tiny_variant(tmp_path / "tiny.json"))
    for name in ("tiny.tflite", "tiny.onnx", "tiny_saved"):
        out = tmp_path / name
        code, stdout, err = run_cli("export", "--variant", tiny, "-o", str(out), "--verify", images,
                                    "--verify-limit", "40", "--min-agreement", "0.99")
        assert code == 0, err
        assert "top-1 agreement" in stdout
        report = json.loads((tmp_path / f"{name}.verify.json").read_text())
        assert report["images"] == 40 and report["agreement"] >= 0.99 and report["max_abs_diff"] < 1e-3
    from effscale.export.convert import load_source

    run = tmp_path / "run"  # a transfer run directory: bench measures its best checkpoint
    (run / "checkpoints").mkdir(parents=True)
    load_source(variant=tiny)[0].save(run / "checkpoints" / "best.keras")
    artifacts = [str(tmp_path / n) for n in ("tiny.tflite", "tiny.onnx", "tiny_saved")]
    code, stdout, err = run_cli("bench", *artifacts, str(run),
                                "--same-process", "--throughput-batch", "4", "--throughput-runs", "1", "--format", "json")
    assert code == 0, err
    records = json.loads(stdout)[0]["records"]
    assert [r["runtime"] for r in records] == ["tflite", "onnx", "savedmodel", "keras"]
    assert all(r["resolution"] == 32 and r["p50_ms"] > 0 for r in records)
    assert records[3]["name"] == "run" and records[3]["params"] > 0


@pytest.mark.slow
def test_int8_takes_uint8_pixels_and_low_agreement_fails(run_cli, tmp_path):
    from effscale.export.convert import load_source
    from effscale.export.runtimes import TFLiteRunner
    from effscale.export.verify import verify

    tiny = str(write_tiny_variant(tmp_path / "tiny.json"))
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3)).astype(np.uint8))
    out = tmp_path / "tiny-int8.tflite"
    code, _, err = run_cli("export", "--variant", tiny, "-o", str(out), "--quantize", "int8", "--calibration", str(calib))
    assert code == 0, err
    assert TFLiteRunner(out).input_dtype == np.uint8
    # A model with other random weights is not what the artifact holds: verification must fail.
    other, _ = load_source(variant=tiny)
    x = np.random.default_rng(1).integers(0, 256, (32, 32, 32, 3)).astype(np.float32)
    result = verify(other, out, "tflite", x, min_agreement=0.5)
    assert result["agreement"] < 0.5 and not result["passed"]
