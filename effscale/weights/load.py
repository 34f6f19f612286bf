"""Pretrained weights without torch: read PyTorch state dicts safely, load them into Keras.

Public API (what commands call):

* ``load_pretrained(model, weights, spec)`` -- resolve ``weights`` (a registry name such
  as ``"lite0"`` or a path to a ``.pth`` file), check the checkpoint fits ``spec`` (a
  NetworkSpec or a published variant name), convert every tensor to Keras's layout and
  set it on ``model``'s layers by name. Returns a summary dict. A head of another size
  (a 10-class transfer model against a 1000-class checkpoint) is left as built.
* ``read_checked(weights, spec)`` then ``load_state_dict(model, state, spec)`` -- the same
  in two steps, so a command refuses bad weights before it builds a model.
* ``resolve_weights(weights)`` -- the ``Path`` of a registry name or of a file.
* ``read_state_dict(path)`` -- ``{name: numpy array}`` from a ``.pth`` file.
* ``check_architecture(state, spec)`` -- raise ``WeightsError`` if the checkpoint is for
  another architecture or size; names the published variant it looks like.

The safe reader is ``effscale.weights.pth`` (no torch, nothing in the file is run); the
registry names resolve in ``effscale.weights.resolve``. Both are re-exported here.

Layouts (lukemelas ``efficientnet_pytorch`` key names, which the Lite packages use):
conv ``(O, I, H, W)`` -> ``(H, W, I, O)``; depthwise ``(C, 1, H, W)`` -> ``(H, W, C, 1)``;
BatchNorm ``weight, bias, running_mean, running_var`` -> ``gamma, beta, mean, variance``
(``num_batches_tracked`` ignored; eps 1e-3 and momentum 0.99 are Keras's defaults and
the TF originals'); dense ``(out, in)`` -> ``(in, out)``.

No Keras import here: the checks are arithmetic on a NetworkSpec, and the model is only
touched through ``get_layer(name).set_weights``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effscale.errors import WeightsError
from effscale.net.arch import NetworkSpec
from effscale.weights.pth import read_state_dict  # noqa: F401 - re-exported
from effscale.weights.resolve import REGISTRY, RegistryWeights, registry_key, resolve_weights  # noqa: F401

# ---------------------------------------------------------------------------------------
# Architecture: expected lukemelas keys and shapes of a NetworkSpec (torch layout)

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class Target:
    """One torch module and the Keras layer that receives its tensors."""

    module: str  # checkpoint prefix, e.g. "_blocks.3._depthwise_conv"
    layer: str  # Keras layer name, e.g. "block2b_dwconv"
    kind: str  # conv | conv_bias | depthwise | bn | dense
    shapes: dict  # torch tensor name suffix -> shape (torch layout)


def _conv(module, layer, c_out, c_in, k, bias=False):
    shapes = {"weight": (c_out, c_in, k, k)} | ({"bias": (c_out,)} if bias else {})
    return Target(module, layer, "conv_bias" if bias else "conv", shapes)


def _bn(module, layer, channels):
    return Target(module, layer, "bn", {s: (channels,) for s in BN_SUFFIXES})


def expected_targets(spec: NetworkSpec, num_classes: int | None) -> list[Target]:
    """Every lukemelas module ``spec`` has, in order, with its torch shapes; no head if num_classes is None."""
    targets = [_conv("_conv_stem", "stem_conv", spec.stem_filters, 3, 3), _bn("_bn0", "stem_bn", spec.stem_filters)]
    n = 0
    for i, stage in enumerate(spec.stages):
        for j in range(stage.repeats):
            c_in = stage.filters_in if j == 0 else stage.filters_out
            filters = c_in * stage.expand_ratio
            p, name = f"_blocks.{n}.", f"block{i + 1}{chr(j + 97)}_"
            if stage.expand_ratio != 1:
                targets += [_conv(p + "_expand_conv", name + "expand_conv", filters, c_in, 1),
                            _bn(p + "_bn0", name + "expand_bn", filters)]
            targets += [Target(p + "_depthwise_conv", name + "dwconv", "depthwise",
                               {"weight": (filters, 1, stage.kernel_size, stage.kernel_size)}),
                        _bn(p + "_bn1", name + "bn", filters)]
            if 0 < stage.se_ratio <= 1:
                squeezed = max(1, int(c_in * stage.se_ratio))
                targets += [_conv(p + "_se_reduce", name + "se_reduce", squeezed, filters, 1, bias=True),
                            _conv(p + "_se_expand", name + "se_expand", filters, squeezed, 1, bias=True)]
            targets += [_conv(p + "_project_conv", name + "project_conv", stage.filters_out, filters, 1),
                        _bn(p + "_bn2", name + "project_bn", stage.filters_out)]
            n += 1
    last = spec.stages[-1].filters_out
    targets += [_conv("_conv_head", "top_conv", spec.head_filters, last, 1), _bn("_bn1", "top_bn", spec.head_filters)]
    if num_classes is not None:
        targets.append(Target("_fc", "predictions", "dense",
                              {"weight": (num_classes, spec.head_filters), "bias": (num_classes,)}))
    return targets


def _expected_shapes(targets: list[Target]) -> dict[str, tuple]:
    return {f"{t.module}.{suffix}": shape for t in targets for suffix, shape in t.shapes.items()}


def _relevant(state: dict[str, np.ndarray]) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}


def checkpoint_classes(state: dict[str, np.ndarray]) -> int | None:
    weight = state.get("_fc.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def guess_variants(state: dict[str, np.ndarray]) -> list[str]:
    """Published variants whose architecture matches the checkpoint exactly (any head size)."""
    from effscale.net.scaling import PUBLISHED_VARIANTS, scale_network

    shapes = _relevant(state)
    classes = checkpoint_classes(state)
    return [name for name, variant in PUBLISHED_VARIANTS.items()
            if _expected_shapes(expected_targets(scale_network(variant), classes)) == shapes]


def _spec_of(spec: NetworkSpec | str, name: str | None = None) -> tuple[str, NetworkSpec]:
    if isinstance(spec, NetworkSpec):
        return name or "the model", spec
    from effscale.net.scaling import published_variant, scale_network

    variant = published_variant(spec)
    return variant.name, scale_network(variant)


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_architecture(state: dict[str, np.ndarray], spec: NetworkSpec | str, name: str | None = None) -> list[Target]:
    """The targets to load (head included when the checkpoint has one); WeightsError on any mismatch.

    ``name`` labels a NetworkSpec in messages (``"lite0"``); a variant name labels itself.
    """
    label, network = _spec_of(spec, name)
    classes = checkpoint_classes(state)
    targets = expected_targets(network, classes)
    expected = _expected_shapes(targets)
    found = _relevant(state)
    problems = []
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and found[k] != expected[k]]
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (first {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s) (first {extra[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} shape mismatch(es) (first {k}: checkpoint {_fmt_shape(found[k])}, "
                        f"{label} needs {_fmt_shape(expected[k])})")
    if problems:
        guesses = guess_variants(state)
        hint = (f"; the checkpoint looks like {' / '.join(guesses)}" if guesses
                else "; it matches none of the published variants")
        if not any(k.startswith("_blocks.") for k in found):
            hint = ("; its keys are not lukemelas-style EfficientNet names (_conv_stem, _blocks.N..., _fc)"
                    f", e.g. {next(iter(found), '(empty)')}")
        raise WeightsError(f"checkpoint does not fit {label}: {'; '.join(problems)}{hint}")
    return targets


# ---------------------------------------------------------------------------------------
# Conversion and loading into a Keras model


def convert(target: Target, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Torch tensors of one module -> the weight list of its Keras layer, in Keras's order."""
    get = lambda suffix: np.asarray(state[f"{target.module}.{suffix}"], dtype=np.float32)  # noqa: E731
    if target.kind == "conv":
        return [get("weight").transpose(2, 3, 1, 0)]
    if target.kind == "conv_bias":
        return [get("weight").transpose(2, 3, 1, 0), get("bias")]
    if target.kind == "depthwise":
        return [get("weight").transpose(2, 3, 0, 1)]
    if target.kind == "bn":
        return [get(s) for s in BN_SUFFIXES]
    if target.kind == "dense":
        return [get("weight").T, get("bias")]
    raise ValueError(target.kind)


def load_state_dict(model, state: dict[str, np.ndarray], spec: NetworkSpec | str, source: str = "checkpoint",
                    name: str | None = None) -> dict:
    """Set ``state`` on ``model`` (built from ``spec``); see ``load_pretrained``."""
    targets = check_architecture(state, spec, name)
    layers = {layer.name: layer for layer in model.layers}
    loaded, head = 0, "none in checkpoint"
    for target in targets:
        layer = layers.get(target.layer)
        if target.kind == "dense":
            if layer is None:
                head = "skipped (model has no classifier)"
                continue
            classes = checkpoint_classes(state)
            units = tuple(w.shape for w in layer.get_weights())
            if units != ((state["_fc.weight"].shape[1], classes), (classes,)):
                head = f"skipped (checkpoint has {classes} classes; model head {units[-1][0]} stays as built)"
                continue
            head = f"loaded ({classes} classes)"
        elif layer is None:
            raise WeightsError(f"the model has no layer {target.layer!r} for {target.module}; build it with "
                               "effscale's builder from the same spec")
        values = convert(target, state)
        current = [tuple(w.shape) for w in layer.get_weights()]
        if current != [v.shape for v in values]:
            raise WeightsError(f"layer {target.layer} has weight shapes {current} but {target.module} gives "
                               f"{[v.shape for v in values]}; the model was not built from this spec")
        layer.set_weights(values)
        loaded += 1
    return {"source": source, "layers_loaded": loaded,
            "tensors": sum(len(t.shapes) for t in targets), "head": head}


def read_checked(weights: str | Path, spec: NetworkSpec | str, name: str | None = None) -> tuple[dict, str]:
    """``(state, description)`` of ``weights`` once it is known to fit ``spec``: the cheap
    check a command runs before it builds a model or creates a run directory."""
    path, description = resolve_weights(weights)
    label = name or (spec if isinstance(spec, str) else "this model")
    if isinstance(spec, NetworkSpec) and spec.input_norm != "lite" and registry_key(str(weights)) in REGISTRY:
        raise WeightsError(f"weights {weights!r} are EfficientNet-Lite weights and do not fit {label}; "
                           "use them with a lite variant (lite0-lite2)")
    state = read_state_dict(path)
    check_architecture(state, spec, name)
    return state, description


def load_pretrained(model, weights: str | Path, spec: NetworkSpec | str, name: str | None = None) -> dict:
    """Load ``weights`` (``"lite0"``/``"lite1"``/``"lite2"`` or a ``.pth`` path) into ``model``.

    ``model`` must be built by ``effscale.net.keras_model.build_model`` from ``spec`` (a
    NetworkSpec or a published variant name such as ``"lite0"``), at any resolution and
    with or without the top. A classifier whose size differs from the checkpoint's
    (transfer to 10 classes) keeps its fresh initialisation. Raises ``WeightsError``
    (one line) for unknown names, missing packages, unreadable or unsafe files and
    checkpoints of another architecture; returns a summary dict. ``name`` (e.g. "lite0")
    labels a NetworkSpec in error messages.
    """
    state, description = read_checked(weights, spec, name)
    return load_state_dict(model, state, spec, description, name)

