"""What runs the frozen prefix in the caching pass: the choice, the check against Keras, the key.

The choice and the fallbacks are tested with stand-ins (no Keras); one test converts a
tiny prefix for real, and the end-to-end runs through the command are @slow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from effscale.errors import ConfigError, EffscaleError
from effscale.transfer import prefix_runtime as PR
from effscale.transfer.cache import cache_key

DESCRIBE = {"network": "tiny", "image_size": 48, "cut": "block2b_add", "precision": "float32"}


class FakePrefix:
    """Keras's ``predict`` for a stand-in prefix: per-image channel sums."""

    def predict(self, images, batch_size, verbose):
        return np.asarray(images, np.float32).sum(axis=(1, 2))


def _images(n=10):
    return np.random.default_rng(0).integers(0, 256, (n, 6, 6, 3)).astype(np.float32)


# --- the cache key ---------------------------------------------------------------------------
def test_the_key_differs_between_runtimes_and_keras_keeps_the_old_key():
    x = _images()
    assert PR.key_describe(DESCRIBE, "keras") == DESCRIBE  # caches filled before the option are read
    keras_key = cache_key(PR.key_describe(DESCRIBE, "keras"), x)
    litert_key = cache_key(PR.key_describe(DESCRIBE, "litert"), x)
    assert keras_key == cache_key(DESCRIBE, x) and litert_key != keras_key


# --- the choice: settings, environment and what is on disk ----------------------------------
@pytest.mark.parametrize("available, precision, expected", [(True, "float32", "litert"),
                                                            (False, "float32", "keras"),
                                                            (True, "mixed_bfloat16", "keras")])
def test_auto_on_a_fresh_cache(monkeypatch, available, precision, expected):
    monkeypatch.setattr(PR, "litert_available", lambda: available)
    assert PR.choose_runtime("auto", precision, lambda runtime: False) == expected


@pytest.mark.parametrize("started, expected", [({"keras"}, "keras"), ({"litert"}, "litert"),
                                               ({"keras", "litert"}, "litert")])
def test_auto_continues_a_started_pass_whatever_is_available(monkeypatch, started, expected):
    """A pass that fell back to Keras (or ran on it) resumes on Keras: its logged chunks are reused."""
    monkeypatch.setattr(PR, "litert_available", lambda: True)
    assert PR.choose_runtime("auto", "float32", lambda runtime: runtime in started) == expected


@pytest.mark.parametrize("requested", ["keras", "litert"])
def test_an_explicit_runtime_is_taken_as_given(monkeypatch, requested):
    monkeypatch.setattr(PR, "litert_available", lambda: pytest.fail("not consulted"))
    other = {"keras": "litert", "litert": "keras"}[requested]
    assert PR.choose_runtime(requested, "float32", lambda runtime: runtime == other) == requested


def test_relative_difference_is_against_the_largest_activation():
    reference = np.array([[1.0, -4.0], [0.5, 2.0]], np.float32)
    assert PR.relative_difference(reference, reference) == 0
    assert PR.relative_difference(reference, reference + [[0, 0], [0.04, 0]]) == pytest.approx(0.01)
    assert not PR.relative_difference(reference, reference * np.nan) <= PR.TOLERANCE


# --- opening a runtime: the check against Keras and the fallbacks ---------------------------
def _fake_litert(monkeypatch, scale=1.0, fail=False):
    monkeypatch.setattr(PR, "litert_available", lambda: True)

    def convert(prefix):
        if fail:
            raise EffscaleError("tflite conversion failed: unsupported op")
        return lambda images: FakePrefix().predict(images, 0, 0) * scale

    monkeypatch.setattr(PR, "litert_compute", convert)


def test_litert_within_the_tolerance_fills_the_cache(monkeypatch, capsys):
    _fake_litert(monkeypatch, scale=1 + PR.TOLERANCE / 2)
    opened = PR.open_compute("litert", FakePrefix(), _images())
    assert opened.runtime == "litert" and opened.difference == pytest.approx(PR.TOLERANCE / 2, rel=1e-3)
    assert "prefix runtime: LiteRT (converted in" in capsys.readouterr().err


@pytest.mark.parametrize("fail", [False, True])
def test_litert_falls_back_to_keras_in_one_line(monkeypatch, capsys, fail):
    _fake_litert(monkeypatch, scale=1.01, fail=fail)
    opened = PR.open_compute("litert", FakePrefix(), _images())
    assert opened.runtime == "keras"
    np.testing.assert_array_equal(opened.compute(_images(3)), FakePrefix().predict(_images(3), 0, 0))
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith("running the prefix on Keras")
    assert ("conversion failed" if fail else "of the activation scale on 8 images (tolerance 0.001)") in err


def test_litert_missing_is_an_error_when_asked_for_and_a_fallback_under_auto(monkeypatch, capsys):
    monkeypatch.setattr(PR, "litert_available", lambda: False)
    with pytest.raises(ConfigError, match="--prefix-runtime litert needs the TensorFlow backend"):
        PR.open_compute("litert", FakePrefix(), _images(), required=True)
    assert PR.open_compute("litert", FakePrefix(), _images()).runtime == "keras"
    assert "LiteRT is not available here" in capsys.readouterr().err


# --- the real thing (TensorFlow) -------------------------------------------------------------
def test_auto_picks_litert_under_tensorflow():
    require("ai_edge_litert", "test")
    from effscale.backend import set_defaults

    set_defaults()
    import keras

    assert keras.backend.backend() == "tensorflow" and PR.litert_available()
    assert PR.choose_runtime("auto", "float32", lambda runtime: False) == "litert"


def _tiny_prefix(native_shape, image_size=48):
    from effscale.backend import set_defaults

    set_defaults()
    import keras

    from effscale.transfer.config import TransferConfig
    from effscale.transfer.model import HEAD_LAYERS, build_transfer_model
    from effscale.transfer.prefix import cut_layer, split_model
    from effscale.transfer.strategies import configure_phase
    from tests.test_transfer_train import tiny_network

    keras.utils.set_random_seed(0)
    config = TransferConfig(strategy="top-blocks", blocks=1)
    spec = dataclasses.replace(tiny_network(8, repeats=3), drop_connect_rate=0.2)  # block2b_drop in the prefix
    model, backbone = build_transfer_model(config, spec, native_shape, 10, image_size)
    configure_phase(model, backbone, config, "top-blocks")
    cut = cut_layer(backbone, "top-blocks")
    return split_model(model, backbone, cut, HEAD_LAYERS)[0]


def test_top_blocks_of_every_block_cuts_after_the_stem():
    from effscale.backend import set_defaults

    set_defaults()
    from effscale.transfer.config import TransferConfig
    from effscale.transfer.model import build_transfer_model
    from effscale.transfer.prefix import cut_layer
    from effscale.transfer.strategies import configure_phase
    from tests.test_transfer_train import tiny_network

    spec = tiny_network(8, repeats=3)
    total = sum(stage.repeats for stage in spec.stages)
    config = TransferConfig(strategy="top-blocks", blocks=total)
    model, backbone = build_transfer_model(config, spec, (32, 32, 3), 10, 32)
    configure_phase(model, backbone, config, "top-blocks")
    cut = cut_layer(backbone, "top-blocks")
    names = [layer.name for layer in backbone.layers]
    assert cut.startswith("stem") and names[names.index(cut) + 1].startswith("block1a")
    assert not any(layer.trainable and layer.weights for layer in backbone.layers[:names.index(cut) + 1])
    # One block fewer: the cut moves to the end of the first block.
    configure_phase(model, backbone, TransferConfig(strategy="top-blocks", blocks=total - 1), "top-blocks")
    assert cut_layer(backbone, "top-blocks").startswith("block1a")


def test_litert_activations_equal_keras_on_a_tiny_prefix():
    """Native non-square images resized inside the graph, a spatial cut, a batch tail padded."""
    require("ai_edge_litert", "test")
    prefix = _tiny_prefix((24, 40, 3))
    x = np.random.default_rng(1).integers(0, 256, (37, 24, 40, 3)).astype(np.uint8)
    pytest_handlers = logging.root.handlers[:]
    logging.root.handlers.clear()  # as in a plain process, where absl's logging.basicConfig() would act
    try:
        opened = PR.open_compute("litert", prefix, x, required=True)
        left = logging.root.handlers[:]
    finally:
        logging.root.handlers[:] = pytest_handlers
    assert not left  # a stderr handler here would print a transfer run's INFO log on the console
    assert opened.runtime == "litert" and opened.difference <= PR.TOLERANCE and opened.convert_s > 0
    reference = prefix.predict(x.astype(np.float32), verbose=0)
    got = opened.compute(x)
    assert got.shape == reference.shape and reference.ndim == 4 and len(got) == 37
    assert PR.relative_difference(reference, got) <= PR.TOLERANCE


# --- end to end through the command ----------------------------------------------------------
def _probe_args(tmp_path, run_dir, *extra):
    from tests.test_transfer_cache import _pretrained, _tiny_args

    weights = tmp_path / "pre.weights.h5"
    if not weights.exists():
        _pretrained(tmp_path, 0)
    return _tiny_args(tmp_path, run_dir, "--strategy", "linear-probe", "--weights", str(weights), *extra)


def _extra(run_dir: Path) -> dict:
    return json.loads((run_dir / "checkpoints" / "state.json").read_text())["extra"]


@pytest.mark.slow
def test_runtimes_fill_their_own_caches_and_auto_keeps_to_a_fallback(run_cli, tmp_path, monkeypatch):
    require("ai_edge_litert", "test")
    roots = tmp_path / "cache" / "activations"
    # 1. auto, LiteRT too far from Keras (forced): one notice, the pass runs on Keras.
    monkeypatch.setattr(PR, "TOLERANCE", -1.0)
    code, _, err = run_cli(*_probe_args(tmp_path, tmp_path / "a"))
    assert code == 0, err
    assert "running the prefix on Keras" in err and "caching the frozen prefix on Keras" in err
    extra = _extra(tmp_path / "a")
    assert extra["prefix_runtime"] == "keras" and extra["prefix_time_s"] >= extra["prefix_convert_s"] > 0
    assert len(list(roots.iterdir())) == 2
    # 2. auto again, tolerance back: the Keras cache is reused, nothing converted.
    monkeypatch.setattr(PR, "TOLERANCE", 1e-3)
    code, _, err = run_cli(*_probe_args(tmp_path, tmp_path / "b"))
    assert code == 0 and err.count("reused from the cache") == 2 and "prefix runtime" not in err
    assert _extra(tmp_path / "b")["prefix_runtime"] == "keras"
    # 3. litert: its own key, computed, and within the tolerance of Keras's activations.
    code, _, err = run_cli(*_probe_args(tmp_path, tmp_path / "c", "--prefix-runtime", "litert"))
    assert code == 0 and "caching the frozen prefix on LiteRT" in err and "reused from the cache" not in err
    assert len(list(roots.iterdir())) == 4
    on_keras = np.load(Path(_extra(tmp_path / "a")["activations_train"]) / "activations.npy").astype(np.float32)
    on_litert = np.load(Path(_extra(tmp_path / "c")["activations_train"]) / "activations.npy").astype(np.float32)
    assert PR.relative_difference(on_keras, on_litert) <= 2 * PR.TOLERANCE  # each side rounded to float16
    # 4. keras: the old behaviour, its cache read again, no conversion.
    code, _, err = run_cli(*_probe_args(tmp_path, tmp_path / "d", "--prefix-runtime", "keras"))
    assert code == 0 and err.count("reused from the cache") == 2 and "LiteRT" not in err
