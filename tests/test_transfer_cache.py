"""The activation cache: float16 per view, resumable chunk by chunk, never stale (no Keras)."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from effscale.transfer.cache import ActivationCache, cache_key, epoch_order, gather, view_images


def _images(n=10, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)


def _prefix(images):
    """A stand-in for a frozen prefix: per-image column sums, so a flip changes the result."""
    return images.astype(np.float32).sum(axis=(1, 3))  # (n, 4): one value per column


def _cache(tmp_path, x, chunk=3, key="k"):
    return ActivationCache(tmp_path, key, len(x), (4,), chunk=chunk)


def test_stores_every_view_in_float16(tmp_path):
    x = _images()
    cache = _cache(tmp_path, x)
    stats = cache.fill(x, _prefix)
    assert (stats.chunks, stats.computed, stats.reused) == (4, 4, 0)
    store = cache.load()
    assert store.dtype == np.float16 and store.shape == (2, 10, 4)
    np.testing.assert_allclose(store[0], _prefix(x), rtol=1e-3)
    np.testing.assert_allclose(store[1], _prefix(x)[:, ::-1], rtol=1e-3)  # flipped columns
    assert not np.allclose(store[0], store[1])


def test_refill_reuses_everything(tmp_path):
    x = _images()
    _cache(tmp_path, x).fill(x, _prefix)
    calls = []
    stats = _cache(tmp_path, x).fill(x, lambda b: calls.append(len(b)) or _prefix(b))
    assert calls == [] and stats.reused == 4 and stats.computed == 0


def test_memory_mapped_above_the_ram_budget(tmp_path):
    x = _images()
    cache = _cache(tmp_path, x)
    cache.fill(x, _prefix)
    assert isinstance(cache.load(budget=cache.nbytes - 1), np.memmap)
    assert not isinstance(cache.load(budget=cache.nbytes), np.memmap)
    np.testing.assert_array_equal(cache.load(budget=0), cache.load(budget=1 << 30))


def test_incomplete_cache_is_not_loaded(tmp_path):
    x = _images()
    cache = _cache(tmp_path, x)
    with pytest.raises(RuntimeError, match="incomplete"):
        cache.load()


def test_a_torn_log_line_recomputes_only_that_chunk(tmp_path):
    x = _images()
    cache = _cache(tmp_path, x)
    cache.fill(x, _prefix)
    log = cache.path / "done.log"
    log.write_text("0\n1\n2", encoding="utf-8")  # the last append was cut short: "2" torn from "3"
    calls = []
    stats = _cache(tmp_path, x).fill(x, lambda b: calls.append(len(b)) or _prefix(b))
    assert stats.reused == 2 and calls == [3, 3, 1, 1]  # chunks 2 and 3, both views each
    assert _cache(tmp_path, x).done_chunks() == {0, 1, 2, 3}
    np.testing.assert_allclose(cache.load()[0], _prefix(x), rtol=1e-3)


KILL_SCRIPT = textwrap.dedent("""
    import os, sys, numpy as np
    from effscale.transfer.cache import ActivationCache
    x = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    seen = []
    def prefix(images):
        seen.append(1)
        if len(seen) == 5:  # third chunk, first view: die like kill -9, mid-chunk
            os.kill(os.getpid(), 9)
        return images.astype(np.float32).sum(axis=(1, 3))
    ActivationCache(sys.argv[1], "k", 10, (4,), chunk=3).fill(x, prefix)
""")


def test_kill_during_the_caching_pass_then_resume(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    x = _images()
    cache = _cache(tmp_path, x)
    assert cache.done_chunks() == {0, 1}
    calls = []
    stats = cache.fill(x, lambda b: calls.append(len(b)) or _prefix(b))
    assert stats.reused == 2 and calls == [3, 3, 1, 1]
    np.testing.assert_allclose(cache.load()[1], _prefix(x)[:, ::-1], rtol=1e-3)


@pytest.mark.parametrize("change", ["image", "weights", "size", "describe"])
def test_key_changes_with_anything_the_activations_depend_on(change):
    x = _images()
    w = [np.ones((3, 3), np.float32)]
    describe = {"variant": "lite0", "image_size": 224, "cut": "block6c_add"}
    base = cache_key(describe, x, w)
    assert cache_key(dict(describe), x.copy(), [a.copy() for a in w]) == base
    if change == "image":
        x = x.copy()
        x[7, 1, 2, 0] ^= 1
    elif change == "weights":
        w = [w[0] + np.float32(1e-6)]
    elif change == "size":
        describe = {**describe, "image_size": 160}
    else:
        describe = {**describe, "cut": "block5c_add"}
    assert cache_key(describe, x, w) != base


def test_a_cache_with_another_layout_is_not_reused(tmp_path):
    x = _images()
    _cache(tmp_path, x, chunk=3).fill(x, _prefix)
    other = ActivationCache(tmp_path, "k", len(x), (2, 2))  # same folder, other activation shape
    assert other.done_chunks() == set()
    other.fill(x, lambda b: _prefix(b).reshape(-1, 2, 2))
    assert other.load().shape == (2, 10, 2, 2)


def test_a_partly_filled_cache_keeps_its_chunking(tmp_path):
    x = _images()
    cache = _cache(tmp_path, x, chunk=3)
    cache.fill(x, _prefix)
    (cache.path / "done.log").write_text("0\n1\n", encoding="utf-8")
    again = ActivationCache(tmp_path, "k", len(x), (4,), chunk=1024)  # another default chunk size now
    assert again.chunk == 3 and again.done_chunks() == {0, 1}
    calls = []
    again.fill(x, lambda b: calls.append(len(b)) or _prefix(b))
    assert calls == [3, 3, 1, 1]


def test_epoch_order_depends_only_on_seed_and_epoch():
    a = epoch_order(100, 2, seed=3, epoch=4)
    b = epoch_order(100, 2, seed=3, epoch=4)
    c = epoch_order(100, 2, seed=3, epoch=5)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert sorted(a[0]) == list(range(100)) and set(np.unique(a[1])) == {0, 1}


def test_gather_picks_each_image_in_its_view(tmp_path):
    store = np.arange(2 * 6 * 3, dtype=np.float16).reshape(2, 6, 3)
    order = np.array([5, 0, 3, 1])
    views = np.array([1, 0, 1, 0])
    out = gather(store, order, views)
    expected = np.stack([store[v, i] for v, i in zip(views, order)]).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    np.save(tmp_path / "s.npy", store)
    np.testing.assert_array_equal(gather(np.load(tmp_path / "s.npy", mmap_mode="r"), order, views), expected)


def test_flip_view_mirrors_columns():
    x = _images(2)
    np.testing.assert_array_equal(view_images(x, "flip")[:, :, 0], x[:, :, -1])
    with pytest.raises(ValueError):
        view_images(x, "rotate")


# --- end to end through the command (slow: Keras models) --------------------------------
def _tiny_args(tmp_path, run_dir, *extra):
    from tests.test_transfer_train import base_args, write_variant

    return base_args(write_variant(tmp_path / "tiny.json"), run_dir, *extra)


def _pretrained(tmp_path, seed):
    import keras

    from effscale.net.keras_model import build_model
    from tests.test_transfer_train import tiny_network

    keras.utils.set_random_seed(seed)
    path = tmp_path / "pre.weights.h5"
    build_model(tiny_network(8), include_top=False, pooling="avg", image_size=32).save_weights(path)
    return path


@pytest.mark.slow
def test_changed_weights_file_or_image_size_is_never_served_a_stale_cache(run_cli, tmp_path):
    weights = _pretrained(tmp_path, 0)
    probe = ("--strategy", "linear-probe", "--weights", str(weights))
    code, _, err = run_cli(*_tiny_args(tmp_path, tmp_path / "a", *probe))
    assert code == 0 and "computed once and cached" in err
    roots = tmp_path / "cache" / "activations"
    assert len(list(roots.iterdir())) == 2  # train and val
    weights = _pretrained(tmp_path, 1)  # the same file name, other values
    code, _, err = run_cli(*_tiny_args(tmp_path, tmp_path / "b", *probe))
    assert code == 0 and "reused from the cache" not in err and len(list(roots.iterdir())) == 4
    code, _, err = run_cli(*_tiny_args(tmp_path, tmp_path / "c", *probe, "--image-size", "40"))
    assert code == 0 and "reused from the cache" not in err and len(list(roots.iterdir())) == 6


@pytest.mark.slow
def test_kill_9_during_the_caching_pass_then_resume(run_cli, tmp_path):
    run_dir = tmp_path / "run"
    args = _tiny_args(tmp_path, run_dir, "--strategy", "top-blocks", "--blocks", "1", "--epochs", "2",
                      "--limit-train", "2048", "--image-size", "64", "--weights", str(_pretrained(tmp_path, 0)))
    env = {**os.environ, "EFFSCALE_CACHE_CHUNK": "64", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-m", "effscale", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    roots = tmp_path / "cache" / "activations"
    import time

    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            logs = list(roots.glob("*/done.log"))
            if logs and len(logs[0].read_text().splitlines()) >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the caching pass finished before it could be killed"
    done = len(list(roots.glob("*/done.log"))[0].read_text().splitlines())
    assert 3 <= done < 32
    code, _, err = run_cli("transfer", "--resume", str(run_dir), "--no-progress")
    assert code == 0, err
    assert f"{done}/32 chunks already cached" in err or f"{done + 1}/32 chunks already cached" in err
    lines = (run_dir / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2"]


# --- crop views -------------------------------------------------------------------------------
def test_a_crop_view_is_a_reflect_pad_and_crop_the_same_in_any_chunking():
    from effscale.transfer.cache import train_views

    x = np.random.default_rng(3).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    whole = view_images(x, "crop1")
    # Computed chunk by chunk (as the caching pass does), every image gets the same crop.
    parts = np.concatenate([view_images(x[lo:lo + 7], "crop1", first=lo) for lo in range(0, 40, 7)])
    np.testing.assert_array_equal(parts, whole)
    # Each crop is the image, or its mirror, shifted by at most 1 px (12.5% of 8) with reflection.
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    mirrored = np.pad(x[:, :, ::-1], ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    shifts = set()
    for i in range(40):
        found = [(f, dy, dx) for f, src in enumerate((padded, mirrored)) for dy in range(3) for dx in range(3)
                 if np.array_equal(src[i, dy:dy + 8, dx:dx + 8], whole[i])]
        assert found, f"image {i} is not a pad-and-crop of its source"
        shifts.add(found[0])
    assert len(shifts) > 6  # the offsets and flips vary over images
    assert not np.array_equal(view_images(x, "crop2"), whole)  # another view, other crops
    assert train_views(2) == ("image", "flip", "crop1", "crop2") and train_views(0) == ("image", "flip")
    with pytest.raises(ValueError):
        view_images(x, "crop0")


def test_crop_views_are_cached_as_extra_views_under_their_own_key(tmp_path):
    from effscale.transfer.cache import train_views

    x = _images(12)
    views = train_views(2)
    cache = ActivationCache(tmp_path, cache_key({}, x, views=views), len(x), (4,), views=views, chunk=5)
    cache.fill(x, _prefix)
    store = cache.load()
    assert store.shape == (4, 12, 4)
    np.testing.assert_allclose(store[2], _prefix(view_images(x, "crop1")), rtol=1e-3)
    np.testing.assert_allclose(store[3], _prefix(view_images(x, "crop2")), rtol=1e-3)
    assert cache_key({}, x, views=views) != cache_key({}, x)  # a 2-view cache is never read as 4 views


@pytest.mark.slow
def test_crop_views_are_cached_for_training_only_and_trained_on(run_cli, tmp_path):
    import json

    args = _tiny_args(tmp_path, tmp_path / "run", "--strategy", "top-blocks", "--blocks", "1", "--epochs", "2",
                      "--augment", "flip,crop", "--crop-views", "2", "--weights", str(_pretrained(tmp_path, 0)))
    code, _, err = run_cli(*args)
    assert code == 0, err
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "activations").glob("*/meta.json")]
    assert sorted(tuple(m["views"]) for m in metas) == [("image", "flip"), ("image", "flip", "crop1", "crop2")]
    assert "4 views" in err and "crop is not applied" not in err
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # two epochs trained on the 4-view cache
    # The same run without crop views reads neither cache (another key, another shape).
    code, _, err = run_cli(*_tiny_args(tmp_path, tmp_path / "plain", "--strategy", "top-blocks", "--blocks", "1",
                                       "--epochs", "1", "--augment", "flip,crop",
                                       "--weights", str(tmp_path / "pre.weights.h5")))
    assert code == 0, err
    assert "crop is not applied per epoch" in err
    assert len(list((tmp_path / "cache" / "activations").glob("*/meta.json"))) == 3  # a new 2-view train cache


@pytest.mark.slow
def test_no_prefix_cache_trains_the_top_on_fresh_crops_and_leaves_the_bottom_frozen(run_cli, tmp_path):
    import json

    import keras

    weights = _pretrained(tmp_path, 0)
    run_dir = tmp_path / "run"
    code, _, err = run_cli(*_tiny_args(tmp_path, run_dir, "--strategy", "top-blocks", "--blocks", "1", "--epochs",
                                       "2", "--augment", "flip,crop", "--no-prefix-cache", "--weights", str(weights)))
    assert code == 0, err
    assert not (tmp_path / "cache" / "activations").exists()  # no caching pass
    assert "crop is not applied per epoch" not in err  # crops are drawn afresh
    assert json.loads((run_dir / "manifest.json").read_text())["config"]["prefix_cache"] is False
    assert len((run_dir / "history.csv").read_text().splitlines()) == 3
    from effscale.net.keras_model import build_model
    from tests.test_transfer_train import tiny_network

    pretrained = build_model(tiny_network(8), include_top=False, pooling="avg", image_size=32)
    pretrained.load_weights(weights)
    trained = keras.models.load_model(run_dir / "checkpoints" / "last.keras").get_layer("efficientnet")
    changed = {w.path.split("/")[0] for w, before in zip(trained.weights, pretrained.get_weights())
               if not np.array_equal(keras.ops.convert_to_numpy(w), before)}
    assert changed and all(name.startswith(("block2b", "top_")) for name in changed), changed


def _rss_file_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_an_epoch_over_a_memory_mapped_cache_does_not_keep_the_file_resident(tmp_path):
    # 2 views x 2,048 images x 16 KiB = 64 MiB on disk; an epoch of batches reads all of it.
    x = np.zeros((2048, 1, 1, 1), dtype=np.uint8)
    cache = ActivationCache(tmp_path, "big", len(x), (8192,), chunk=512)
    cache.fill(x, lambda images: np.ones((len(images), 8192), dtype=np.float32))
    store = cache.load(budget=0)
    assert isinstance(store, np.memmap)
    before = _rss_file_mb()
    order, views = epoch_order(2048, 2, seed=0, epoch=0)
    for lo in range(0, 2048, 64):
        batch = gather(store, order[lo:lo + 64], views[lo:lo + 64])
        assert batch.shape == (64, 8192) and batch.min() == 1.0
    assert _rss_file_mb() - before < 16  # without releasing, the 64 MiB read would stay resident
