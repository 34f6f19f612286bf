"""Architectures as data: one StageSpec per MBConv stage, one NetworkSpec per network.

Field names follow ``keras.applications.efficientnet.DEFAULT_BLOCKS_ARGS`` so that a
spec can be compared with the Keras reference key by key. Pure Python: no Keras here.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace

from effscale.errors import ConfigError


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks; ``repeats`` blocks share kernel, expansion and SE."""

    kernel_size: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    strides: int
    se_ratio: float = 0.25
    id_skip: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StageSpec:
        return cls(**_checked_kwargs(cls, data, "stage"))


@dataclass(frozen=True)
class NetworkSpec:
    """A complete EfficientNet-style network, baseline or scaled.

    ``activation`` and ``input_norm`` let other members of the family (EfficientNet-Lite:
    relu6, ``(x - 127) / 128``) share the same builder and cost model.
    """

    stem_filters: int
    stages: tuple[StageSpec, ...]
    head_filters: int
    resolution: int
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    activation: str = "swish"
    input_norm: str = "imagenet"

    def __post_init__(self):
        if not self.stages:
            raise ConfigError("a network needs at least one stage")
        if self.resolution < 1 or self.stem_filters < 1 or self.head_filters < 1:
            raise ConfigError("resolution, stem_filters and head_filters must be positive")
        for stage in self.stages:
            if stage.repeats < 1 or stage.filters_in < 1 or stage.filters_out < 1:
                raise ConfigError("every stage needs repeats, filters_in and filters_out >= 1")
            if stage.strides not in (1, 2):
                raise ConfigError(f"stage strides must be 1 or 2, got {stage.strides}")

    @property
    def total_blocks(self) -> int:
        return sum(stage.repeats for stage in self.stages)

    def with_resolution(self, resolution: int) -> NetworkSpec:
        return replace(self, resolution=int(resolution))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["stages"] = [stage.to_dict() for stage in self.stages]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> NetworkSpec:
        kwargs = _checked_kwargs(cls, data, "network")
        if not isinstance(kwargs.get("stages"), (list, tuple)):
            raise ConfigError("network 'stages' must be a list of stage objects")
        kwargs["stages"] = tuple(StageSpec.from_dict(s) for s in kwargs["stages"])
        return cls(**kwargs)


def _checked_kwargs(cls, data: dict, what: str) -> dict:
    """Keep the known fields of ``cls``; name the missing ones in a clear error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING}
    kwargs = {k: v for k, v in data.items() if k in names}
    missing = sorted(n for n in required if n not in kwargs)
    if missing:
        raise ConfigError(f"{what} is missing the field(s): {', '.join(missing)}")
    return kwargs


# EfficientNet-B0 (Tan & Le 2019, Table 1); identical to Keras's DEFAULT_BLOCKS_ARGS.
B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(kernel_size=3, repeats=1, filters_in=32, filters_out=16, expand_ratio=1, strides=1),
    StageSpec(kernel_size=3, repeats=2, filters_in=16, filters_out=24, expand_ratio=6, strides=2),
    StageSpec(kernel_size=5, repeats=2, filters_in=24, filters_out=40, expand_ratio=6, strides=2),
    StageSpec(kernel_size=3, repeats=3, filters_in=40, filters_out=80, expand_ratio=6, strides=2),
    StageSpec(kernel_size=5, repeats=3, filters_in=80, filters_out=112, expand_ratio=6, strides=1),
    StageSpec(kernel_size=5, repeats=4, filters_in=112, filters_out=192, expand_ratio=6, strides=2),
    StageSpec(kernel_size=3, repeats=1, filters_in=192, filters_out=320, expand_ratio=6, strides=1),
)

BASELINE = NetworkSpec(stem_filters=32, stages=B0_STAGES, head_filters=1280, resolution=224)
