"""Frozen run configs, recipes and presets, with a JSON round-trip. No Keras here.

A transfer run is fully described by one ``TransferConfig``. Defaults live on the
dataclass and *are* the ``default`` recipe; other recipes and presets are named sets of
overrides, applied in this order (later wins)::

    dataclass defaults (recipe "default") < --recipe < --preset < explicit flags

``resolve_transfer_config`` does exactly that and validates the result, so the trainer
never reads a setting that was not checked. docs/transfer.md explains every default.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from effscale.errors import ConfigError

STRATEGIES = ("full", "top-blocks", "linear-probe", "last-layers")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("cosine", "constant", "exponential", "inverse-time")
POOLINGS = ("avg", "max")
# linear-probe: what the head reads from the pooled features. "sqrt" is their signed square root
# (power normalisation): +0.67 points [+0.25, +1.08] (paired) on CIFAR-10 for Lite0 (docs/transfer.md).
PROBE_FEATURES = ("sqrt", "raw")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
INPUT_CHECKS = ("error", "warn")
# What runs the frozen prefix in the caching pass (effscale.transfer.prefix_runtime).
PREFIX_RUNTIMES = ("auto", "keras", "litert")
DEFAULT_PREFIX_RUNTIME = "auto"  # LiteRT when it is available, else Keras
MIN_IMAGE_SIZE = 32  # five stride-2 stages: 32 px leaves a 1x1 feature map
# Upper bounds: beyond these a value is a typo (an extra zero, 1e9), and training with it
# would fail much later (out of memory, an overflow deep in Keras) or run for ever.
MAX_IMAGE_SIZE = 2048  # the same limit `effscale scale` puts on a derived resolution
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 65_536
MAX_SEED = 2**32 - 1  # numpy's and TensorFlow's seeds are 32-bit
# AdamW is Adam plus decoupled weight decay: with weight_decay 0 it would be plain Adam, so
# it uses Keras's own AdamW default instead (the other optimizers take 0 as "no decay").
ADAMW_WEIGHT_DECAY = 0.004
UPPER_BOUNDS = {
    "image_size": MAX_IMAGE_SIZE, "epochs": MAX_EPOCHS, "warmup_epochs": MAX_EPOCHS, "batch_size": MAX_BATCH_SIZE,
    "blocks": 1000, "last_layers": 100_000, "crop_views": 16, "limit_train": 10**12, "limit_val": 10**12,
    "seed": MAX_SEED,
    # No bound on the learning rates: too large a rate is a NaN loss in the first steps, and
    # the NaN guard stops the run with its report and a one-line error saying so.
    "lr_decay": 1.0,  # inverse-time decay per step: above 1 the rate is gone after the first steps
    "weight_decay": 1.0,  # decoupled decay multiplies the weights by (1 - lr * wd) each step
    "epsilon": 1.0, "decay_epochs": MAX_EPOCHS,
}
# What a JSON config may hold for each field's annotation ("X | None" also allows null), and
# how the error names it. bool is an int to Python, but true is not a number of epochs.
JSON_TYPES = {"int": ((int,), "a whole number"), "float": ((int, float), "a number"),
              "bool": ((bool,), "true or false"), "str": ((str,), "a string")}

CONFIG_SCHEMA = "effscale/transfer-config@1"


@dataclass(frozen=True)
class TransferConfig:
    """Everything a transfer run depends on. Defaults = the ``default`` recipe."""

    recipe: str = "default"
    preset: str | None = None
    # model
    variant: str = "b0"
    weights: str = "imagenet"  # imagenet | none | lite0-lite2 | path to a weights file
    image_size: int | None = None  # None: the variant's own resolution (224 for b0)
    pooling: str = "avg"
    probe_features: str = "sqrt"  # linear-probe only: PROBE_FEATURES
    dropout: float = 0.2
    # data
    dataset: str = "cifar100"
    data_dir: str | None = None
    cache_dir: str | None = None
    limit_train: int | None = None
    limit_val: int | None = None
    augment: tuple[str, ...] = ("flip", "crop")
    # Frozen-bottom strategies: extra cached views of each training image, each a fixed random
    # pad-and-crop (and flip), since a cached prefix cannot crop per epoch. 0: image + flip only.
    crop_views: int = 0
    # Frozen-bottom strategies: train the top on cached prefix activations (False: run the
    # frozen bottom every step, so flips and crops are drawn afresh each epoch).
    prefix_cache: bool = True
    # strategy
    strategy: str = "full"
    blocks: int = 2  # top-blocks: how many blocks from the top are trained
    last_layers: int = 4  # last-layers: how many layers from the output are trained (seed recipe)
    warmup_epochs: int = 2  # full: epochs of head-only training before unfreezing
    freeze_bn: bool | None = None  # None: frozen (inference mode) iff weights are pretrained
    # optimisation
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3  # head / first phase
    finetune_learning_rate: float = 1e-4  # second phase of full, and top-blocks
    schedule: str = "cosine"
    lr_decay: float = 0.0  # inverse-time: lr / (1 + decay * step); exponential: unused
    decay_rate: float = 0.97  # exponential: multiply by this ...
    decay_epochs: float = 2.4  # ... every this many epochs
    momentum: float = 0.9  # sgd and rmsprop
    rho: float = 0.9  # rmsprop
    epsilon: float = 1e-7  # adam/rmsprop epsilon
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    precision: str = "float32"
    prefix_runtime: str = DEFAULT_PREFIX_RUNTIME  # the caching pass of frozen-bottom strategies
    input_check: str = "error"  # pretrained weights + 0-1 inputs: refuse (error) or warn
    seed: int = 0

    # --- JSON round-trip -----------------------------------------------------------------
    def to_dict(self) -> dict:
        data = asdict(self)
        data["augment"] = list(self.augment)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TransferConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a transfer config must be a JSON object, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k != "schema"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown transfer config key(s): {', '.join(unknown)}")
        if "augment" in data and isinstance(data["augment"], list | None):
            data["augment"] = tuple(data["augment"] or ())  # anything else fails validate()'s type check
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps({"schema": CONFIG_SCHEMA, **self.to_dict()}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> TransferConfig:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"transfer config is not valid JSON ({exc.msg}, line {exc.lineno})") from None

    # --- derived values ------------------------------------------------------------------
    @property
    def pretrained(self) -> bool:
        return self.weights.lower() != "none"

    @property
    def bn_frozen(self) -> bool:
        """BatchNorm in inference mode: yes for pretrained weights (their statistics are good
        and small fine-tuning batches would wreck them), no from scratch (nothing to keep)."""
        return self.pretrained if self.freeze_bn is None else self.freeze_bn

    @property
    def optimizer_weight_decay(self) -> float:
        """The decoupled weight decay the optimizer gets (``ADAMW_WEIGHT_DECAY`` for adamw at 0)."""
        if self.optimizer == "adamw" and self.weight_decay == 0:
            return ADAMW_WEIGHT_DECAY
        return self.weight_decay

    @property
    def cached_prefix(self) -> bool:
        """Frozen-bottom strategies train their top on cached activations of the frozen
        prefix, unless asked not to (``--no-prefix-cache``) or an augmentation other than
        flip/crop changes what the prefix sees."""
        return (self.prefix_cache and self.strategy in ("linear-probe", "top-blocks", "last-layers")
                and set(self.augment) <= {"flip", "crop"})

    @property
    def sqrt_features(self) -> bool:
        """The head reads the signed square root of the pooled features: the linear probe's
        ``probe_features="sqrt"``; a trained top learns its own scaling."""
        return self.strategy == "linear-probe" and self.probe_features == "sqrt"

    def phases(self) -> list[tuple[str, int, int]]:
        """``[(phase, first_epoch, end_epoch)]``; epochs are 0-based and global."""
        if self.strategy == "linear-probe" and self.cached_prefix:
            return [("head", 0, 1)]  # one L-BFGS fit to convergence (effscale.transfer.probe), not epochs
        if self.strategy == "full" and self.pretrained and 0 < self.warmup_epochs < self.epochs:
            return [("head", 0, self.warmup_epochs), ("all", self.warmup_epochs, self.epochs)]
        phase = {"full": "all", "top-blocks": "top-blocks", "linear-probe": "head",
                 "last-layers": "last-layers"}[self.strategy]
        return [(phase, 0, self.epochs)]

    def phase_learning_rate(self, phase: str) -> float:
        if phase == "head" or phase == "last-layers":
            return self.learning_rate
        if phase == "all" and not (self.strategy == "full" and self.pretrained and self.warmup_epochs > 0):
            return self.learning_rate  # one phase only (from scratch, or no warm-up)
        return self.finetune_learning_rate

    # --- validation ----------------------------------------------------------------------
    def _check_types(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            base, _, optional = f.type.partition(" | ")
            if value is None and optional:
                continue
            if base == "tuple[str, ...]":
                ok, wanted = isinstance(value, tuple) and all(isinstance(v, str) for v in value), "a list of names"
            else:
                types, wanted = JSON_TYPES[base]
                ok = isinstance(value, types) and (base == "bool" or not isinstance(value, bool))
            if not ok:
                raise ConfigError(f"{f.name.replace('_', '-')} must be {wanted}, got {value!r}")

    def validate(self) -> TransferConfig:
        def choice(name, options):
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"{name.replace('_', '-')} must be one of {', '.join(options)}, got {value!r}")

        # Types first (a JSON config can hold anything), then the documented ranges, then
        # the sanity bounds: every bad value is one line naming the flag and its range.
        self._check_types()
        choice("strategy", STRATEGIES)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("pooling", POOLINGS)
        choice("probe_features", PROBE_FEATURES)
        choice("precision", PRECISIONS)
        choice("input_check", INPUT_CHECKS)
        choice("prefix_runtime", PREFIX_RUNTIMES)
        if self.prefix_runtime == "litert" and self.precision != "float32":
            raise ConfigError(f"prefix-runtime litert runs the prefix in float32, not {self.precision}; pass "
                              "--prefix-runtime keras (or auto, which picks Keras for mixed precision)")
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name in ("epochs", "batch_size", "blocks", "last_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(
                f"image size {self.image_size} is below {MIN_IMAGE_SIZE}: five stride-2 stages would shrink "
                f"it below one pixel; pass --image-size {MIN_IMAGE_SIZE} or more"
            )
        if not 0 <= self.warmup_epochs:
            raise ConfigError(f"warmup epochs must be >= 0, got {self.warmup_epochs}")
        for name in ("learning_rate", "finetune_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name.replace('_', ' ')} must be a positive number, got {value}")
        for name, low, high in (("dropout", 0, 1), ("label_smoothing", 0, 1), ("momentum", 0, 1),
                                ("rho", 0, 1), ("decay_rate", 0, 1.0000001)):
            value = getattr(self, name)
            if not low <= value < high:
                raise ConfigError(f"{name.replace('_', ' ')} must be in [{low}, {high}), got {value}")
        for name in ("lr_decay", "weight_decay", "epsilon"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if not self.decay_epochs > 0:
            raise ConfigError(f"decay epochs must be positive, got {self.decay_epochs}")
        for name in ("limit_train", "limit_val"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1, got {value}")
        for name, high in UPPER_BOUNDS.items():
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value <= high):
                shown = f"{high:,}" if isinstance(high, int) else f"{high:g}"
                raise ConfigError(f"{name.replace('_', '-')} must be at most {shown}, got {value}; it looks like "
                                  "a typo (see docs/transfer.md, 'Limits')")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.crop_views < 0:
            raise ConfigError(f"crop-views must be >= 0, got {self.crop_views}")
        if self.crop_views and "crop" not in self.augment:
            raise ConfigError(f"crop-views {self.crop_views} caches crops, but crop is not in --augment "
                              f"{','.join(self.augment) or 'none'}; add crop or pass --crop-views 0")
        if self.crop_views and not self.prefix_cache:
            raise ConfigError(f"crop-views {self.crop_views} are cached views, but --no-prefix-cache turns the "
                              "cache off (its crops are drawn afresh each epoch); drop one of the two")
        if self.crop_views and not self.cached_prefix:  # else they would be silently ignored
            why = (f"--strategy {self.strategy} trains the whole network, on crops drawn afresh each epoch"
                   if self.strategy == "full" else
                   f"--augment {','.join(self.augment)} changes what the frozen prefix sees, so nothing is cached")
            raise ConfigError(f"crop-views {self.crop_views} are cached views of a frozen prefix, but {why}; "
                              "drop --crop-views")
        from effscale.data.datasets import check_augment

        check_augment(self.augment)  # a cached prefix applies only flip (effscale.transfer.prefix)
        return self


# --- recipes --------------------------------------------------------------------------------
RECIPES: dict[str, dict] = {
    # The working recipe: field defaults above (docs/transfer.md says why).
    "default": {},
    # The student group's exact settings: B0 + ImageNet weights, GlobalMaxPooling,
    # Dropout, Dense(100, softmax), only the last 4 layers trainable, RMSProp lr 0.0064 with
    # Keras-2 style decay 1e-6 per step, batch 128, 20 epochs, images upsampled 32 -> 224,
    # augmentation normalize (/255, training batches only) + flip + rotation + zoom,
    # train = the 50,000 training images, validation = the 10,000 others.
    "seed": {
        "variant": "b0",
        "weights": "imagenet",
        "dataset": "cifar100",
        "image_size": 224,
        "pooling": "max",
        "dropout": 0.2,
        "strategy": "last-layers",
        "last_layers": 4,
        "optimizer": "rmsprop",
        "learning_rate": 0.0064,
        "schedule": "inverse-time",
        "lr_decay": 1e-6,
        "rho": 0.9,
        "momentum": 0.0,
        "epsilon": 1e-7,
        "batch_size": 128,
        "epochs": 20,
        "augment": ("normalize", "flip", "rotate", "zoom"),
        "label_smoothing": 0.0,
        "input_check": "warn",
    },
    # The paper's optimiser (Tan & Le 2019, sec. 5.2): RMSProp decay 0.9, momentum 0.9,
    # epsilon 1e-3 (TF's), lr 0.256 at batch 4096 (0.016 per 256 images) decayed by 0.97
    # every 2.4 epochs, weight decay 1e-5. Applied to the fine-tuning phase.
    "paper": {
        "optimizer": "rmsprop",
        "rho": 0.9,
        "momentum": 0.9,
        "epsilon": 1e-3,
        "learning_rate": 0.016 * 64 / 256,
        "finetune_learning_rate": 0.016 * 64 / 256,
        "schedule": "exponential",
        "decay_rate": 0.97,
        "decay_epochs": 2.4,
        "weight_decay": 1e-5,
        "label_smoothing": 0.1,
    },
    # The measured CPU choice for pretrained weights (docs/transfer.md, "Which strategy"): the
    # top 8 blocks on cached activations for 6 epochs at 3e-4. On all of CIFAR-10 at 160 px
    # it tied the full fine-tune in about half the time; at 1e-3 it sat 1.6 points lower.
    "cpu": {
        "strategy": "top-blocks",
        "blocks": 8,
        "epochs": 6,
        "finetune_learning_rate": 3e-4,
    },
}

PRESETS: dict[str, dict] = {
    # Well under a minute, no download: 32 px synthetic images, B0 from scratch. 80 steps
    # (640 images, 4 epochs of batch 32) are what it takes to show learning clearly; 16 steps
    # (256 images, 2 epochs) stayed near chance.
    "smoke": {
        "dataset": "synthetic",
        "weights": "none",
        "image_size": 32,
        "limit_train": 640,
        "limit_val": 128,
        "epochs": 4,
        "warmup_epochs": 1,
        "batch_size": 32,
    },
}


def resolve_transfer_config(recipe: str = "default", preset: str | None = None, base: TransferConfig | None = None,
                            **overrides) -> TransferConfig:
    """Recipe, then preset, then explicit overrides (``None`` values are ignored)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if base is not None and base.recipe == recipe:
        config = replace(base, preset=preset)  # a saved config already holds its recipe's values
    else:
        config = replace(base or TransferConfig(), recipe=recipe, preset=preset, **RECIPES[recipe])
    if preset is not None:
        config = replace(config, **PRESETS[preset])
    given = {k: v for k, v in overrides.items() if v is not None}
    # The paper's learning rate scales with the batch (0.016 per 256 images) unless given.
    if recipe == "paper" and "batch_size" in given:
        scaled = 0.016 * given["batch_size"] / 256
        config = replace(config, learning_rate=scaled, finetune_learning_rate=scaled)
    known = {f.name for f in fields(TransferConfig)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown transfer setting(s): {', '.join(unknown)}")
    if "augment" in given:
        given["augment"] = tuple(given["augment"])
    return replace(config, **given).validate()


def read_transfer_config(path) -> TransferConfig:
    from effscale.schemas import read_json_object

    data = read_json_object(Path(path), "transfer config")
    if isinstance(data, dict) and "config" in data and "command" in data:
        data = data["config"]  # a run's manifest.json works too
    return TransferConfig.from_dict(data).validate()
