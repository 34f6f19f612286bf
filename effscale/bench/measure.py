"""Timing one target: batch-1 latency, throughput at a larger batch, a training step, memory.

Protocol per target (docs/bench.md says why):
1. build or load, timed as ``load_s``;
2. the first call at each batch size traces/compiles; it is timed apart (``trace_s``);
3. ``warmup`` untimed calls, then ``runs`` timed calls with ``time.perf_counter`` around
   the runtime call only (inputs are converted before the clock starts); the process CPU
   time of each call too (``cpu_p50_ms``): on a shared machine other jobs stretch wall
   time but hardly the CPU time a call needs, and with one thread the two agree when idle;
4. throughput: one untimed call at ``throughput_batch``, then timed calls;
5. ``--train``: ``train_on_batch`` at ``train_batch`` (first call apart, then timed);
6. memory: the process's peak RSS (Linux ``VmHWM``, reset before the target) minus its
   RSS before the model was loaded.
``measure_isolated`` runs each target in a fresh process: TensorFlow's allocator keeps
memory a previous model freed, so in one process only the first model's memory figure is
true, and traced graphs of earlier models would stay alive beside later ones.
Keras is imported inside the functions.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from effscale.bench.stats import summarize
from effscale.bench.targets import Target


@dataclass(frozen=True)
class BenchSettings:
    batch: int = 1
    runs: int = 30
    warmup: int = 5
    throughput_batch: int = 32
    throughput_runs: int = 5
    train: bool = False
    train_batch: int = 8
    train_runs: int = 3
    threads: int | None = None
    seed: int = 0

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


def measure(target: Target, settings: BenchSettings) -> dict:
    """One record: the target's cost, latency percentiles, throughput, memory and timings."""
    rng = np.random.default_rng(settings.seed)
    gc.collect()
    baseline_kb = _status_kb("VmRSS")
    exact_peak = reset_peak_rss()
    start = time.perf_counter()
    runner = load_runner(target, settings.threads)
    load_s = time.perf_counter() - start
    size = runner.input_size
    if not size:
        from effscale.errors import ConfigError

        raise ConfigError(f"{target.name} accepts any input size; pass --resolution N to measure it")
    record = {"name": target.name, "kind": target.kind, "runtime": runner.kind, "resolution": size,
              **target.cost()}
    if getattr(runner, "model", None) is not None and "params" not in record:
        record["params"] = int(runner.model.count_params())

    runner.prepare(settings.batch)
    fed = runner.feed(_images(rng, settings.batch, size))
    trace_s = _timed(runner.run, fed)
    for _ in range(settings.warmup):
        runner.run(fed)
    times, cpu = [], []
    for _ in range(settings.runs):
        cpu_start = time.process_time()
        times.append(_timed(runner.run, fed))
        cpu.append(time.process_time() - cpu_start)
    record |= {"batch": settings.batch, "load_s": load_s, "trace_s": trace_s, **summarize(times),
               "cpu_p50_ms": float(np.median(cpu)) * 1e3}

    if settings.throughput_batch and settings.throughput_runs:
        runner.prepare(settings.throughput_batch)
        fed = runner.feed(_images(rng, settings.throughput_batch, size))
        record["throughput_trace_s"] = _timed(runner.run, fed)
        total = sum(_timed(runner.run, fed) for _ in range(settings.throughput_runs))
        record |= {"throughput_batch": settings.throughput_batch,
                   "images_per_s": settings.throughput_batch * settings.throughput_runs / total}
    if settings.train:
        record |= _train_step(runner, settings, rng, size)

    peak_kb = _status_kb("VmHWM")
    if peak_kb is not None and baseline_kb is not None:
        record |= {"peak_rss_mb": peak_kb / 1024, "mem_mb": (peak_kb - baseline_kb) / 1024,
                   "mem_exact": exact_peak}
    del runner, fed
    _release()
    return record


def _release() -> None:
    import keras

    keras.backend.clear_session()
    gc.collect()


def measure_isolated(target: Target, settings: BenchSettings) -> dict:
    """``measure`` in a fresh spawned process (thread settings applied there first)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_child_entry, target, settings).result()


def _child_entry(target: Target, settings: BenchSettings) -> dict:
    from effscale.backend import native_stderr_captured, set_defaults

    set_defaults()
    # TensorFlow's C++ notices (absl, oneDNN) come at import and again at the first op;
    # in the parent they go to the run log, here they would interleave with the table.
    # Errors still reach the parent as exceptions through the pool.
    with native_stderr_captured():
        info = set_threads(settings.threads)  # before TensorFlow runs its first op
        return measure(target, settings) | info
