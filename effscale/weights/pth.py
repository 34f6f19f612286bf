"""Read PyTorch ``.pth`` state dicts safely, without torch and without running code.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the file names.
``read_state_dict`` uses a restricted unpickler that resolves only the few globals a
tensor needs (``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage`` ...,
``collections.OrderedDict``), each mapped to a harmless local stand-in; any other global
(``os.system``, a model class) stops the load before anything is called. Storages are
read with numpy from the zip (``torch.save`` since 1.6) or from the tail of the legacy
format (what the registry packages ship). No Keras here.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from effscale.errors import WeightsError

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

