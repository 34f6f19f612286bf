"""TransferConfig: recipes, presets, precedence, validation and the JSON round-trip."""

from __future__ import annotations

import json

import pytest

from effscale.transfer.config import RECIPES, TransferConfig, read_transfer_config, resolve_transfer_config
from effscale.errors import ConfigError

# The student group's settings as they reported them; the seed recipe must match exactly.
SEED_EXPECTED = {
    "variant": "b0", "weights": "imagenet", "dataset": "cifar100", "image_size": 224, "pooling": "max",
    "strategy": "last-layers", "last_layers": 4, "optimizer": "rmsprop", "learning_rate": 0.0064,
    "schedule": "inverse-time", "lr_decay": 1e-6, "batch_size": 128, "epochs": 20,
    "augment": ("normalize", "flip", "rotate", "zoom"), "label_smoothing": 0.0,
}


def test_seed_recipe_is_the_groups_settings():
    config = resolve_transfer_config("seed")
    for key, value in SEED_EXPECTED.items():
        assert getattr(config, key) == value, key
    assert config.limit_train is None and config.limit_val is None  # all 50,000 / 10,000 images


def test_default_recipe_is_the_dataclass_defaults():
    assert resolve_transfer_config() == TransferConfig().validate()
    assert TransferConfig().prefix_runtime == "auto"
    assert RECIPES["default"] == {}


def test_paper_recipe_scales_lr_with_batch():
    assert resolve_transfer_config("paper").learning_rate == pytest.approx(0.016 * 64 / 256)
    config = resolve_transfer_config("paper", batch_size=512)
    assert config.learning_rate == pytest.approx(0.032) and config.epsilon == 1e-3 and config.momentum == 0.9
    assert resolve_transfer_config("paper", batch_size=512, learning_rate=0.5).learning_rate == 0.5


def test_precedence_recipe_then_preset_then_flags():
    config = resolve_transfer_config("seed", "smoke", epochs=3)
    assert config.optimizer == "rmsprop"  # from the recipe
    assert config.dataset == "synthetic" and config.image_size == 32  # the preset beats the recipe
    assert config.epochs == 3  # the flag beats both
    assert resolve_transfer_config("seed", epochs=None).epochs == 20  # None means "not given"


def test_json_round_trip(tmp_path):
    config = resolve_transfer_config("seed", "smoke", augment=("flip",), freeze_bn=False)
    assert TransferConfig.from_json(config.to_json()) == config
    assert TransferConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"command": "transfer", "config": config.to_dict()}))
    assert read_transfer_config(manifest) == config


def test_null_is_allowed_only_where_a_setting_has_a_none(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"freeze_bn": None, "image_size": None, "augment": None}))
    config = read_transfer_config(path)
    assert config.freeze_bn is None and config.image_size is None and config.augment == ()
    path.write_text(json.dumps({"epochs": None}))
    with pytest.raises(ConfigError, match="epochs must be a whole number, got None"):
        read_transfer_config(path)


def test_unknown_keys_and_bad_json(tmp_path):
    with pytest.raises(ConfigError, match="unknown transfer config key.*colour"):
        TransferConfig.from_dict({"colour": "red"})
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_transfer_config(bad)


@pytest.mark.parametrize("override, message", [
    ({"image_size": 31}, "image size 31 is below 32"),
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"strategy": "everything"}, "strategy must be one of"),
    ({"learning_rate": float("nan")}, "learning rate must be a positive number"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"augment": ("blur",)}, "unknown augmentation blur"),
    ({"limit_train": 0}, "limit-train must be at least 1"),
    ({"prefix_runtime": "onnx"}, "prefix-runtime must be one of auto, keras, litert, got 'onnx'"),
    ({"prefix_runtime": "litert", "precision": "mixed_bfloat16"}, "litert runs the prefix in float32"),
    ({"crop_views": -2}, "crop-views must be >= 0"),
    ({"crop_views": 1.5}, "crop-views must be a whole number"),
    ({"crop_views": 2, "prefix_cache": False}, "crop-views 2 are cached views, but --no-prefix-cache"),
    ({"prefix_cache": "no"}, "prefix-cache must be true or false, got 'no'"),
    ({"probe_features": "cube"}, "probe-features must be one of sqrt, raw, got 'cube'"),
    ({"crop_views": 2, "strategy": "full"}, "crop-views 2 are cached views of a frozen prefix, but --strategy full"),
    ({"crop_views": 2, "strategy": "top-blocks", "augment": ("flip", "crop", "zoom")},
     "--augment flip,crop,zoom changes what the frozen prefix sees"),
])
def test_validation(override, message):
    with pytest.raises(ConfigError, match=message):
        resolve_transfer_config(**override)


def test_phases():
    assert TransferConfig(epochs=10, warmup_epochs=2).phases() == [("head", 0, 2), ("all", 2, 10)]
    # From scratch there is no head to warm up: one phase, BatchNorm trains.
    scratch = TransferConfig(weights="none")
    assert scratch.phases() == [("all", 0, 10)] and not scratch.bn_frozen
    assert TransferConfig().bn_frozen
    # The cached-prefix probe is one L-BFGS fit; a probe that cannot use the cache trains epochs.
    assert TransferConfig(strategy="linear-probe").phases() == [("head", 0, 1)]
    assert TransferConfig(strategy="linear-probe", augment=("randaugment",)).phases() == [("head", 0, 10)]
    assert TransferConfig(strategy="top-blocks", blocks=3).phases() == [("top-blocks", 0, 10)]
    # Asked not to cache, a frozen-bottom strategy runs its bottom every step (and a probe trains epochs).
    assert TransferConfig(strategy="top-blocks").cached_prefix
    assert not TransferConfig(strategy="top-blocks", prefix_cache=False).cached_prefix
    assert TransferConfig(strategy="linear-probe", prefix_cache=False).phases() == [("head", 0, 10)]
    two = TransferConfig()
    assert two.phase_learning_rate("head") == two.learning_rate
    assert two.phase_learning_rate("all") == two.finetune_learning_rate
    assert scratch.phase_learning_rate("all") == scratch.learning_rate


def test_saved_config_keeps_its_values_and_flags_still_win(tmp_path):
    saved = resolve_transfer_config("seed", learning_rate=0.01, epochs=3)
    path = tmp_path / "config.json"
    path.write_text(saved.to_json())
    base = read_transfer_config(path)
    assert resolve_transfer_config(base.recipe, base=base) == saved  # the recipe is not re-applied over it
    assert resolve_transfer_config(base.recipe, base=base, epochs=5).epochs == 5
