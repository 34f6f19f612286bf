"""What ``effscale bench`` measures: variants, phi values, transfer runs and artifacts.

Each becomes a ``Target`` with its arithmetic cost (params, MACs, activations) when it
is known without loading anything. Pure Python: no Keras.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from effscale.errors import ConfigError
from effscale.export.artifacts import kind_of
from effscale.net.arch import NetworkSpec
from effscale.net.cost import network_activations, network_cost


@dataclass(frozen=True)
class Target:
    name: str
    kind: str  # "spec" (built from a NetworkSpec), "keras", "savedmodel", "tflite" or "onnx"
    spec: NetworkSpec | None = None
    path: Path | None = None

    def cost(self) -> dict:
        """Params, MACs and activations by arithmetic; empty for artifacts."""
        if self.spec is None:
            return {}
        cost, acts = network_cost(self.spec), network_activations(self.spec)
        return {"params": cost.params, "macs": cost.macs, "acts": acts.acts,
                "peak_act_bytes": acts.peak_bytes(), "resolution": self.spec.resolution}


def spec_target(name: str, spec: NetworkSpec, resolution: int | None = None) -> Target:
    if resolution:
        spec = spec.with_resolution(resolution)
        name = f"{name}@{resolution}"
    return Target(name, "spec", spec=spec)


def phi_target(phi: float, coefficients, family: str, resolution: int | None = None) -> Target:
    from effscale.net.scaling import compound, scale_network

    variant = compound(phi, coefficients, family=family)
    return spec_target(variant.name, scale_network(variant), resolution)


def path_target(path: str | Path) -> Target:
    """A transfer run directory (its best checkpoint), a .keras file, or an exported artifact."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / "checkpoints").is_dir():
        from effscale.evaluate import locate_model

        keras_file, _, _ = locate_model(path)
        return Target(path.name, "keras", path=keras_file)
    if not path.exists() and not path.suffix:
        raise ConfigError(f"{path} does not exist; pass a transfer run directory or an artifact file")
    return Target(path.name, kind_of(path), path=path)


def resolve_targets(variants=(), phis=(), paths=(), coefficients=None, family: str = "efficientnet",
                    resolution: int | None = None) -> list[Target]:
    """Every target in command-line order (variants, then phi values, then paths); checked
    before anything is built, so a typo in the last one fails in milliseconds."""
    from effscale.net.scaling import PAPER_COEFFICIENTS
    from effscale.schemas import resolve_network

    targets = [spec_target(*resolve_network(v), resolution) for v in variants]
    targets += [phi_target(p, coefficients or PAPER_COEFFICIENTS, family, resolution) for p in phis]
    targets += [path_target(p) for p in paths]
    if not targets:
        raise ConfigError("nothing to measure; pass --variant NAME, --phi N or a model path")
    return targets
