"""Timing one target: batch-1 latency, throughput at a larger batch, a training step, memory.

Protocol per target (docs/bench.md says why):
1. build or load, timed as ``load_s``;
2. the first call at each batch size traces/compiles; it is timed apart (``trace_s``);
3. ``warmup`` untimed calls, then ``runs`` timed calls in ``blocks`` blocks, with
   ``time.perf_counter`` around the runtime call only (inputs are converted before the
   clock starts) and the process CPU time of each call (``cpu_p50_ms``). The caller
   (``bench.interleave``) spreads the blocks over time and across targets; p50 is the
   median of the block medians, so a slow spell of a shared machine moves one block,
   not the answer;
4. throughput: one untimed call at ``throughput_batch``, then timed calls;
5. ``--train``: ``train_on_batch`` at ``train_batch`` (first call apart, then timed);
6. memory: the process's peak RSS (Linux ``VmHWM``, reset before the target) minus its
   RSS before the model was loaded.
Keras is imported inside the functions.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from effscale.bench.stats import summarize_blocks
from effscale.bench.targets import Target


@dataclass(frozen=True)
class BenchSettings:
    batch: int = 1
    runs: int = 50
    warmup: int = 5
    throughput_batch: int = 32
    throughput_runs: int = 5
    train: bool = False
    train_batch: int = 8
    train_runs: int = 3
    threads: int | None = None
    seed: int = 0
    # The timed runs are split into blocks spread over time (docs/bench.md: repeatability).
    blocks: int = 5
    block_gap_s: float = 2.0

    def to_dict(self) -> dict:
        return asdict(self)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark so the next read covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def set_threads(threads: int | None) -> dict:
    """Pin TensorFlow's thread pools (before its first op) and report what is in force."""
    import keras

    info = {"threads": threads or 0, "cpu_count": os.cpu_count()}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # already initialised in this process: keep what is in force
                pass
        info["tf_intra_op"] = tf.config.threading.get_intra_op_parallelism_threads()
        info["tf_inter_op"] = tf.config.threading.get_inter_op_parallelism_threads()
        # TF fixes its pools at its first op; after that the request is silently ignored
        # (get_* then reports 0, "the runtime's choice"), so the caller must say so.
        info["threads_applied"] = not threads or info["tf_intra_op"] == threads
    return info


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def load_runner(target: Target, threads: int | None):
    from effscale.export.runtimes import runner_for

    if target.kind == "spec":
        from effscale.net.keras_model import build_model

        return runner_for("keras", model=build_model(target.spec))
    return runner_for(target.kind, Path(target.path), threads=threads)


def _images(rng, batch: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, size=(batch, size, size, 3)).astype(np.float32)


def _train_step(runner, settings: BenchSettings, rng, size: int) -> dict:
    model = getattr(runner, "model", None)
    if model is None:
        return {}
    import keras

    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    x = _images(rng, settings.train_batch, size)
    y = rng.integers(0, int(model.output_shape[-1]), size=settings.train_batch)
    first = _timed(model.train_on_batch, x, y)
    times = [_timed(model.train_on_batch, x, y) for _ in range(settings.train_runs)]
    return {"train_trace_s": first, "train_step_ms": float(np.median(times)) * 1e3,
            "train_batch": settings.train_batch}


class Session:
    """One target, loaded once, timed in blocks that the caller spreads over time.

    ``start`` builds or loads, traces and warms up; ``block(n)`` times n calls;
    ``finish`` adds throughput, the training step and memory and returns the record.
    """

    def __init__(self, target: Target, settings: BenchSettings):
        self.target, self.settings = target, settings
        self.rng = np.random.default_rng(settings.seed)
        self.wall: list[list[float]] = []
        self.cpu: list[float] = []

    def start(self) -> None:
        gc.collect()
        self.baseline_kb = _status_kb("VmRSS")
        self.exact_peak = reset_peak_rss()
        start = time.perf_counter()
        self.runner = load_runner(self.target, self.settings.threads)
        self.load_s = time.perf_counter() - start
        self.size = self.runner.input_size
        if not self.size:
            from effscale.errors import ConfigError

            raise ConfigError(f"{self.target.name} accepts any input size; pass --resolution N to measure it")
        self.runner.prepare(self.settings.batch)
        self.fed = self.runner.feed(_images(self.rng, self.settings.batch, self.size))
        self.trace_s = _timed(self.runner.run, self.fed)
        for _ in range(self.settings.warmup):
            self.runner.run(self.fed)

    def block(self, n: int) -> None:
        times = []
        for _ in range(n):
            cpu_start = time.process_time()
            times.append(_timed(self.runner.run, self.fed))
            self.cpu.append(time.process_time() - cpu_start)
        self.wall.append(times)

    def finish(self) -> dict:
        settings, runner, size = self.settings, self.runner, self.size
        record = {"name": self.target.name, "kind": self.target.kind, "runtime": runner.kind,
                  "resolution": size, **self.target.cost()}
        if getattr(runner, "model", None) is not None and "params" not in record:
            record["params"] = int(runner.model.count_params())
        record |= {"batch": settings.batch, "load_s": self.load_s, "trace_s": self.trace_s,
                   **summarize_blocks(self.wall), "cpu_p50_ms": float(np.median(self.cpu)) * 1e3}
        if settings.throughput_batch and settings.throughput_runs:
            runner.prepare(settings.throughput_batch)
            fed = runner.feed(_images(self.rng, settings.throughput_batch, size))
            record["throughput_trace_s"] = _timed(runner.run, fed)
            total = sum(_timed(runner.run, fed) for _ in range(settings.throughput_runs))
            record |= {"throughput_batch": settings.throughput_batch,
                       "images_per_s": settings.throughput_batch * settings.throughput_runs / total}
        if settings.train:
            record |= _train_step(runner, settings, self.rng, size)
        peak_kb = _status_kb("VmHWM")
        if peak_kb is not None and self.baseline_kb is not None:
            record |= {"peak_rss_mb": peak_kb / 1024, "mem_mb": (peak_kb - self.baseline_kb) / 1024,
                       "mem_exact": self.exact_peak}
        del self.runner, self.fed
        _release()
        return record


def _release() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()
