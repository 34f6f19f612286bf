"""The cached frozen prefix: activations of the frozen bottom of a network, stored once.

Every strategy that freezes the bottom of the network (linear-probe, top-blocks N,
last-layers N) feeds the trainable top with the same activations every epoch: the frozen
layers run in inference mode, so their output depends only on the image. This module
stores that output once per image and per *view* (the image, its horizontal flip and,
with ``--crop-views K``, K random pad-and-crop views of the training images), in float16,
so an epoch costs only the trainable top. No Keras here: the caller passes the function
that runs the prefix, which keeps the storage logic testable in milliseconds.

Layout of one cache (``<root>/<key>/``)::

    meta.json        shape, dtype, views, chunk size (written first, atomically)
    activations.npy  float16, shape (views, images, *activation_shape), filled chunk by chunk
    done.log         append-only: one chunk index per line, written after the chunk is flushed

Crash safety: a chunk is written into the memory-mapped ``activations.npy``, flushed to
disk, and only then is its index appended (with fsync) to ``done.log``. A kill at any
moment loses at most the chunk in flight; a resumed run reuses every logged chunk. A
cache whose key differs (other images, other weights, other image size or cut point) is a
different folder, so it is never read by mistake.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from effscale.fsutil import append_line, atomic_path, atomic_write_json

VIEWS = ("image", "flip")
DTYPE = np.float16
# Images per chunk: what a kill during the caching pass can lose (about a minute of a
# 224 px Lite0 prefix on two CPU cores, both views). EFFSCALE_CACHE_CHUNK overrides it.
DEFAULT_CHUNK = 1024
CHUNK_ENV = "EFFSCALE_CACHE_CHUNK"
# Above this many bytes the activations are memory-mapped instead of read into RAM. 2 GiB
# keeps a 224 px Lite0 top-blocks cache of CIFAR-10's validation split (0.4 GB) and the
# pooled features of any split in RAM, and leaves the 1.9 GB training cache of
# top-blocks 2 on the page cache, which the kernel can drop under memory pressure.
DEFAULT_RAM_BUDGET = 2 << 30
RAM_BUDGET_ENV = "EFFSCALE_CACHE_RAM_MB"


def ram_budget() -> int:
    """The RAM budget in bytes: ``EFFSCALE_CACHE_RAM_MB`` if set, else 2 GiB."""
    value = os.environ.get(RAM_BUDGET_ENV)
    if value:
        try:
            return max(0, int(float(value) * (1 << 20)))
        except ValueError:
            pass
    return DEFAULT_RAM_BUDGET


CROP_VIEW_SEED = 1_000_003  # crop views are the same for every run, so caches are shared


def train_views(crops: int) -> tuple[str, ...]:
    """The cached views of the training images: the image, its flip, then ``crops`` crop views."""
    return VIEWS + tuple(f"crop{k}" for k in range(1, crops + 1))


def view_images(images: np.ndarray, view: str, first: int = 0) -> np.ndarray:
    """``images`` (N, H, W, C) as seen in ``view``: unchanged, mirrored left-right, or
    ``cropK``: each image reflect-padded by 12.5% and cut back out at a random integer
    offset, mirrored half the time (the ``crop`` and ``flip`` augmentations, frozen into a
    view). A crop view draws image i's offset and flip from (K, i) alone, ``first`` being
    the index of ``images[0]``, so a view is the same whichever chunks compute it."""
    if view == "image":
        return images
    if view == "flip":
        return images[:, :, ::-1]
    if view.startswith("crop") and view[4:].isdigit() and int(view[4:]) > 0:
        from effscale.data.augment import crop_padding, numpy_crop

        n, h, w = images.shape[:3]
        ph, pw = crop_padding(h), crop_padding(w)
        draws = np.random.default_rng([CROP_VIEW_SEED, int(view[4:])]).integers(
            0, [2 * ph + 1, 2 * pw + 1, 2], size=(first + n, 3))[first:]
        images = np.where(draws[:, 2, None, None, None] == 1, images[:, :, ::-1], images)
        return numpy_crop(images, draws[:, :2], ph, pw)
    raise ValueError(f"unknown view {view!r}; choose from {', '.join(VIEWS)} or cropK")


def cache_key(describe: dict, images: np.ndarray, weights: Iterable[np.ndarray] = (),
              views: Sequence[str] = VIEWS) -> str:
    """What the prefix's output depends on: ``describe`` (architecture, image size, cut
    point, backend, ...), the prefix's weight values and every image's bytes.

    The weights are hashed by value rather than by file name and date, so any change to a
    weights file (or a different random initialisation) gives another key.
    """
    digest = hashlib.blake2b(digest_size=16)
    head = {"describe": describe, "views": list(views), "images": [list(images.shape), str(images.dtype)]}
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for array in weights:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(array.data)
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()


@dataclass
class FillStats:
    chunks: int
    reused: int
    computed: int
    bytes: int


class ActivationCache:
    """One cache: ``(views, num_images, *shape)`` float16 activations under ``root/key``."""

    def __init__(self, root: str | os.PathLike, key: str, num_images: int, shape: Sequence[int],
                 views: Sequence[str] = VIEWS, chunk: int | None = None):
        self.root, self.key = Path(root), key
        self.num_images, self.shape = int(num_images), tuple(int(s) for s in shape)
        self.views = tuple(views)
        if chunk is None:
            env = os.environ.get(CHUNK_ENV, "")
            chunk = int(env) if env.isdigit() and int(env) > 0 else DEFAULT_CHUNK
        self.chunk = int(chunk)
        stored = self._stored_meta()
        if stored is not None and stored.get("chunk") and {**stored, "chunk": self.chunk} == self._meta():
            self.chunk = int(stored["chunk"])  # a partly filled cache keeps the chunking it was started with

    def _stored_meta(self) -> dict | None:
        try:
            return json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @property
    def path(self) -> Path:
        return self.root / self.key

    @property
    def data_path(self) -> Path:
        return self.path / "activations.npy"

    @property
    def full_shape(self) -> tuple[int, ...]:
        return (len(self.views), self.num_images, *self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.full_shape)) * np.dtype(DTYPE).itemsize

    @property
    def num_chunks(self) -> int:
        return -(-self.num_images // self.chunk)

    def _meta(self) -> dict:
        return {"key": self.key, "shape": list(self.full_shape), "dtype": np.dtype(DTYPE).name,
                "views": list(self.views), "chunk": self.chunk}

    def done_chunks(self) -> set[int]:
        """Chunks logged as complete; a torn last line (a kill mid-append) is ignored."""
        log = self.path / "done.log"
        if not log.is_file() or not self.data_path.is_file():
            return set()
        if self._stored_meta() != self._meta():
            return set()
        done = set()
        for line in log.read_text(encoding="utf-8").split("\n")[:-1]:  # an unterminated last line is torn
            if line.strip().isdigit() and int(line) < self.num_chunks:
                done.add(int(line))
        return done

    def _log_chunk(self, index: int) -> None:
        log = self.path / "done.log"
        torn = log.is_file() and log.stat().st_size and not log.read_bytes().endswith(b"\n")
        append_line(log, ("\n" if torn else "") + str(index))

    def complete(self) -> bool:
        return len(self.done_chunks()) == self.num_chunks

    def _open_for_writing(self, done: set[int]) -> np.memmap:
        self.path.mkdir(parents=True, exist_ok=True)
        if done:
            return np.load(self.data_path, mmap_mode="r+")
        # A fresh start (or a cache whose meta no longer fits): begin from an empty log.
        (self.path / "done.log").unlink(missing_ok=True)
        atomic_write_json(self.path / "meta.json", self._meta())
        with atomic_path(self.data_path) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=DTYPE, shape=self.full_shape)
            del array
        return np.load(self.data_path, mmap_mode="r+")

    def fill(self, images: np.ndarray, compute: Callable[[np.ndarray], np.ndarray],
             progress: Callable[[int, int], None] | None = None) -> FillStats:
        """Run ``compute`` (images of one view -> activations) on every chunk not yet cached.

        ``progress(done, total)`` is called after each chunk (counted in images x views).
        """
        if len(images) != self.num_images:
            raise ValueError(f"cache holds {self.num_images} images, got {len(images)}")
        done = self.done_chunks()
        reused = len(done)
        total = self.num_images * len(self.views)
        if len(done) < self.num_chunks:
            store = self._open_for_writing(done)
            for index in range(self.num_chunks):
                if index in done:
                    continue
                lo, hi = index * self.chunk, min(self.num_images, (index + 1) * self.chunk)
                for v, view in enumerate(self.views):
                    out = np.asarray(compute(np.ascontiguousarray(view_images(images[lo:hi], view, first=lo))))
                    if out.shape != (hi - lo, *self.shape):
                        raise ValueError(f"prefix gave activations of shape {out.shape}, "
                                         f"expected {(hi - lo, *self.shape)}")
                    store[v, lo:hi] = out.astype(DTYPE)
                store.flush()  # the data is on disk before the log says so
                release_pages(store)  # written pages are clean now: keep them out of this process
                self._log_chunk(index)
                done.add(index)
                if progress is not None:
                    progress(min(total, len(done) * self.chunk * len(self.views)), total)
            del store
        return FillStats(chunks=self.num_chunks, reused=reused, computed=self.num_chunks - reused,
                         bytes=self.nbytes)

    def load(self, budget: int | None = None) -> np.ndarray:
        """The activations: read into RAM when they fit ``budget`` bytes, else memory-mapped."""
        if not self.complete():
            raise RuntimeError(f"activation cache {self.path} is incomplete; fill it first")
        budget = ram_budget() if budget is None else budget
        if self.nbytes <= budget:
            return np.load(self.data_path)
        return np.load(self.data_path, mmap_mode="r")

    def memory_mapped(self, budget: int | None = None) -> bool:
        return self.nbytes > (ram_budget() if budget is None else budget)


def epoch_order(num_images: int, num_views: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Image order and the view each image is shown in, for one training epoch.

    A pure function of ``(seed, epoch)`` rather than a running random state, so a run
    resumed at epoch N sees exactly the batches the uninterrupted run would have seen.
    """
    rng = np.random.default_rng([int(seed), int(epoch)])
    order = rng.permutation(num_images)
    views = rng.integers(0, num_views, size=num_images)
    return order, views


def gather(store: np.ndarray, order: np.ndarray, views: np.ndarray) -> np.ndarray:
    """``store[views[i], order[i]]`` for every i, as float32, reading a memory map in index order."""
    out = np.empty((len(order), *store.shape[2:]), dtype=np.float32)
    for v in np.unique(views):
        pick = np.flatnonzero(views == v)
        rows = order[pick]
        sort = np.argsort(rows)  # sequential reads of a memory map are much faster than random ones
        out[pick[sort]] = store[v, rows[sort]]
    release_pages(store)
    return out


def release_pages(array: np.ndarray) -> None:
    """Unmap the pages a memory-mapped cache has read from this process.

    An epoch reads every row of the file once; left mapped, those pages would stay in the
    process's resident set until the whole cache (4 GiB and more) counted as its memory.
    Dropped, they stay in the kernel's page cache, which any process can reclaim, and a
    re-read is a minor fault, not disk I/O. A no-op for arrays in RAM and where the
    platform has no ``madvise``.
    """
    mapping = getattr(array, "_mmap", None)  # numpy keeps the mmap on the memmap it opened
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapping.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map: nothing resident to drop
            pass
