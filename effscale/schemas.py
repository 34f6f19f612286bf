"""The two JSON files effscale commands hand to each other (documented in docs/schemas.md).

* coefficients file: written by ``effscale grid`` as ``<run>/best.json``, read by
  ``effscale scale --from``.
* variant file: written by ``effscale scale --output``, read by
  ``effscale transfer --variant FILE`` (and anything else that takes a variant).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from effscale.net.arch import NetworkSpec
from effscale.errors import ConfigError
from effscale.fsutil import atomic_write_json
from effscale.net.scaling import ScalingCoefficients, Variant, published_variant, scale_network

COEFFICIENTS_SCHEMA = "effscale/coefficients@1"
VARIANT_SCHEMA = "effscale/variant@1"


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from ``path``, or a one-line ConfigError naming ``what`` was wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return data


def _number(data: dict, key: str, path: Path) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{path}: '{key}' must be a finite number, got {value!r}")
    return float(value)


def coefficients_document(
    coefficients: ScalingCoefficients,
    budget: float,
    family: str = "efficientnet",
    source: str = "",
    metrics: dict | None = None,
) -> dict:
    return {
        "schema": COEFFICIENTS_SCHEMA,
        "alpha": coefficients.alpha,
        "beta": coefficients.beta,
        "gamma": coefficients.gamma,
        "budget": budget,
        "flops_factor": coefficients.flops_factor,
        "family": family,
        "source": source,
        "metrics": metrics or {},
    }


def write_coefficients(path, coefficients: ScalingCoefficients, budget: float, **extra) -> Path:
    return atomic_write_json(path, coefficients_document(coefficients, budget, **extra))


def read_coefficients(path) -> tuple[ScalingCoefficients, dict]:
    """Read a coefficients file, or ``best.json`` inside a grid run directory."""
    path = Path(path)
    if path.is_dir():
        from effscale.runs import RunDir

        candidate = RunDir(path).best_path
        if not candidate.exists():
            raise ConfigError(
                f"{path} is a directory without best.json; pass a finished grid run directory "
                "or a coefficients JSON file"
            )
        path = candidate
    data = read_json_object(path, "coefficients file")
    schema = data.get("schema", COEFFICIENTS_SCHEMA)
    if schema != COEFFICIENTS_SCHEMA:
        raise ConfigError(f"{path}: schema {schema!r} is not {COEFFICIENTS_SCHEMA!r}")
    coefficients = ScalingCoefficients(
        _number(data, "alpha", path), _number(data, "beta", path), _number(data, "gamma", path)
    ).validate()
    if "budget" in data:
        _number(data, "budget", path)
    return coefficients, data


def tie_set(document: dict) -> tuple[str, ...]:
    """The rows the grid run behind a coefficients file could not separate (empty without one)."""
    ties = (document.get("metrics") or {}).get("tie_set")
    return tuple(map(str, ties)) if isinstance(ties, list) else ()  # not a list: a hand-edited file


def tie_set_warning(document: dict) -> str | None:
    """A warning when the grid run behind a coefficients file could not separate its best rows."""
    metrics = document.get("metrics") or {}
    ties = tie_set(document)
    if len(ties) < 2:
        return None
    return (f"the grid search could not separate {len(ties)} rows ({', '.join(map(str, ties))}); "
            f"{metrics.get('candidate')} was chosen by {metrics.get('rule')}. Any of them is as well supported.")


def variant_document(variant: Variant, coefficients: ScalingCoefficients | None = None) -> dict:
    """The variant file's content: the summary keys of ``effscale scale`` plus the network."""
    from effscale.scale.report import variant_record

    record = variant_record(variant)
    keys = ("name", "family", "source", "phi", "width", "depth", "resolution", "dropout", "params", "flops")
    return {
        "schema": VARIANT_SCHEMA,
        **{key: record[key] for key in keys},
        "coefficients": coefficients.to_dict() if coefficients else None,
        "network": scale_network(variant).to_dict(),
    }


def read_variant_file(path) -> tuple[str, NetworkSpec]:
    """Name and network of a file written by ``effscale scale --output``."""
    path = Path(path)
    data = read_json_object(path, "variant file")
    if data.get("schema") != VARIANT_SCHEMA:
        raise ConfigError(f"{path}: not an effscale variant file (expected schema {VARIANT_SCHEMA!r})")
    if not isinstance(data.get("network"), dict):
        raise ConfigError(f"{path}: missing the 'network' object")
    return str(data.get("name") or path.stem), NetworkSpec.from_dict(data["network"])


def resolve_network(variant: str) -> tuple[str, NetworkSpec]:
    """A published variant name (``b0``, ``lite2``) or a variant file path -> (name, network)."""
    candidate = Path(variant)
    if candidate.suffix == ".json" or candidate.exists():
        if not candidate.exists():
            raise ConfigError(f"variant file {candidate} does not exist")
        return read_variant_file(candidate)
    chosen = published_variant(variant)
    return chosen.name, scale_network(chosen)
