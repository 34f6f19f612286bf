"""Transfer input pipeline and linear-probe benchmarks. Prints ratios.

    python benchmarks/transfer_pipeline.py                  # all three, a few CPU minutes
    python benchmarks/transfer_pipeline.py efficiency probe  # a subset

1. efficiency: end-to-end ``model.fit`` throughput on effscale's pipeline (uint8 native
   32x32 arrays -> tf.data gather/augment/prefetch -> in-model Resizing) divided by bare
   ``train_on_batch`` throughput on one ready batch of the same shape, same model, same batch.
2. group: effscale's pipeline against the student group's approach (images upsampled to
   the training size up front as float32 arrays, augmentation in Python per image, fed from
   a Python generator): speed ratio and peak-memory ratio, each in its own subprocess.
3. probe: ``--strategy linear-probe`` (features computed once, head trained on them)
   against running the frozen backbone every epoch (``last-layers 2``), 5 epochs each,
   through ``effscale.transfer.train.transfer`` with real run directories.

Real CIFAR-10 images from ../shared/data (EFFSCALE_SHARED_DATA) when present, synthetic
otherwise. Timings on a shared CPU are noisy: compare ratios from one run only.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 24  # timed training steps per approach in the group comparison
SHARED = Path(os.environ.get("EFFSCALE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def dataset(n_train: int, n_val: int = 256):
    from effscale.data.datasets import load_dataset

    tar = SHARED / "cifar10-jpeg.tar.gz"
    name = str(tar) if tar.is_file() else "synthetic"
    return load_dataset(name, limit_train=n_train, limit_val=n_val, seed=0)


def model_for(image_size: int, num_classes: int = 10, native: int = 32):
    from effscale.transfer.config import TransferConfig
    from effscale.schemas import resolve_network
    from effscale.transfer.model import build_transfer_model
    from effscale.transfer.strategies import compile_model, make_optimizer

    config = TransferConfig(weights="none", image_size=image_size, label_smoothing=0.0)
    _, spec = resolve_network("b0")
    model, _ = build_transfer_model(config, spec, (native, native, 3), num_classes, image_size)
    compile_model(model, config, make_optimizer(config, "all", 100, 1), num_classes)
    return model


# --- 1. pipeline efficiency --------------------------------------------------------------
def efficiency(image_size=64, batch=64, steps=60, warmup=5, rounds=3) -> dict:
    """Alternates the measurements ``rounds`` times (the CPU is shared: load from other
    processes then hits all alike) and reports medians. ``fit_ready`` feeds ``fit`` one ready
    batch repeated, which separates Keras's own ``fit`` loop from the input pipeline."""
    import statistics

    import numpy as np
    import tensorflow as tf

    from effscale.data.datasets import make_batches

    data = dataset(batch * (steps + warmup))
    model = model_for(image_size)
    x = data.x_train[:batch].astype(np.float32)
    y = np.eye(10, dtype=np.float32)[data.y_train[:batch]]
    ds = make_batches(data.x_train, data.y_train, batch_size=batch, num_classes=10, training=True,
                      augment=("flip", "crop"), deterministic=True)  # what transfer uses
    ready = tf.data.Dataset.from_tensors((x, y)).repeat()
    for _ in range(warmup):
        model.train_on_batch(x, y)
    model.fit(ds.take(warmup), epochs=1, verbose=0)
    model.fit(ready.take(warmup), epochs=1, verbose=0)
    rates = {"bare": [], "pipeline": [], "fit_ready": []}
    cpu = {"bare": [], "pipeline": [], "fit_ready": []}  # process CPU seconds per image
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(steps):
            model.train_on_batch(x, y)
        rates["bare"].append(batch * steps / (time.perf_counter() - t))
        cpu["bare"].append((time.process_time() - c) / (batch * steps))
        for key, source in (("pipeline", ds), ("fit_ready", ready)):
            t, c = time.perf_counter(), time.process_time()
            model.fit(source.take(steps), epochs=1, verbose=0)
            rates[key].append(batch * steps / (time.perf_counter() - t))
            cpu[key].append((time.process_time() - c) / (batch * steps))
    med = {k: statistics.median(v) for k, v in rates.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"image_size": image_size, "batch": batch, "steps": steps, "rounds": rounds,
            "bare_train_on_batch_img_s": round(med["bare"], 1), "pipeline_fit_img_s": round(med["pipeline"], 1),
            "ready_batch_fit_img_s": round(med["fit_ready"], 1),
            "efficiency_per_round": [round(p / b, 3) for b, p in zip(rates["bare"], rates["pipeline"])],
            "efficiency": round(med["pipeline"] / med["bare"], 3),
            "pipeline_vs_ready_batch_fit": round(med["pipeline"] / med["fit_ready"], 3),
            # The same in CPU time, which load from other processes on a shared machine barely moves:
            "cpu_ms_per_image": {k: round(1000 * v, 2) for k, v in mcpu.items()},
            "efficiency_cpu": round(mcpu["bare"] / mcpu["pipeline"], 3)}


# --- 2. against the group's approach -----------------------------------------------------
def _group_child(n: int, image_size: int, batch: int) -> dict:
    """Pre-upsampled float32 arrays + per-image Python augmentation, fed by a generator."""
    import numpy as np
    import tensorflow as tf
    from scipy import ndimage

    data = dataset(n)
    model = model_for(image_size, native=image_size)  # the inputs arrive pre-upsampled
    t0 = time.perf_counter()
    up = np.empty((n, image_size, image_size, 3), np.float32)  # what "upsample to 224 first" costs
    for i in range(0, n, 256):
        up[i:i + 256] = tf.image.resize(data.x_train[i:i + 256], (image_size, image_size)).numpy()
    prep = time.perf_counter() - t0
    labels = np.eye(10, dtype=np.float32)[data.y_train]
    rng = np.random.default_rng(0)

    def augment(img):
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = ndimage.rotate(img, rng.uniform(-15, 15), reshape=False, order=1, mode="reflect")
        zoom = rng.uniform(0.9, 1.1)
        zoomed = ndimage.zoom(img, (zoom, zoom, 1), order=1)
        out = np.zeros_like(img)
        h = min(img.shape[0], zoomed.shape[0])
        out[:h, :h] = zoomed[:h, :h]
        return out

    def batches():
        while True:
            order = rng.permutation(n)
            for i in range(0, n - batch + 1, batch):
                idx = order[i:i + batch]
                yield np.stack([augment(up[j]) for j in idx]), labels[idx]

    gen = batches()
    steps = min(n // batch, STEPS)
    model.fit(gen, steps_per_epoch=2, epochs=1, verbose=0)  # warm-up: tracing
    t = time.perf_counter()
    model.fit(gen, steps_per_epoch=steps, epochs=1, verbose=0)
    rate = steps * batch / (time.perf_counter() - t)
    return {"img_s": rate, "prep_s": prep, "array_bytes": int(up.nbytes)}


def _ours_child(n: int, image_size: int, batch: int) -> dict:
    from effscale.data.datasets import make_batches

    data = dataset(n)
    model = model_for(image_size)
    ds = make_batches(data.x_train, data.y_train, batch_size=batch, num_classes=10, training=True,
                      augment=("flip", "rotate", "zoom"), deterministic=True)
    steps = min(n // batch, STEPS)
    model.fit(ds.take(2), epochs=1, verbose=0)
    t = time.perf_counter()
    model.fit(ds.take(steps), epochs=1, verbose=0)
    rate = steps * batch / (time.perf_counter() - t)
    return {"img_s": rate, "prep_s": 0.0, "array_bytes": int(data.x_train.nbytes)}


def _child(kind: str, n: int, image_size: int, batch: int) -> None:
    result = (_group_child if kind == "group" else _ours_child)(n, image_size, batch)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def group(n=4096, image_size=128, batch=32, rounds=2) -> dict:
    """Each approach in its own process (peak RSS), alternating ours/group ``rounds`` times so
    that load from other processes on the shared CPU hits both alike; medians reported."""
    import statistics

    results = {"ours": [], "group": []}
    for _ in range(rounds):
        for kind in ("ours", "group"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, str(n), str(image_size), str(batch)],
                                 capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{kind} child failed:\n{out.stderr[-2000:]}")
            results[kind].append(json.loads(line[7:]))

    def med(kind, key):
        return statistics.median(r[key] for r in results[kind])

    return {"images": n, "image_size": image_size, "batch": batch, "timed_steps": STEPS, "rounds": rounds,
            "ours_img_s": round(med("ours", "img_s"), 1), "group_img_s": round(med("group", "img_s"), 1),
            "speed_ratio_ours_over_group": round(med("ours", "img_s") / med("group", "img_s"), 2),
            "group_upsample_s": round(med("group", "prep_s"), 1),
            "ours_peak_rss_mb": round(med("ours", "peak_rss_mb")), "group_peak_rss_mb": round(med("group", "peak_rss_mb")),
            "peak_memory_ratio_group_over_ours": round(med("group", "peak_rss_mb") / med("ours", "peak_rss_mb"), 2),
            "dataset_array_mb_ours": round(med("ours", "array_bytes") / 2**20, 1),
            "dataset_array_mb_group": round(med("group", "array_bytes") / 2**20, 1)}


# --- 3. linear probe ---------------------------------------------------------------------
def probe(n=2048, n_val=512, image_size=64, epochs=5) -> dict:
    """Cold: features computed in this run. Warm: a second probe run reusing them (say, another
    head learning rate). Frozen: the backbone runs every epoch (last-layers 2: dropout + dense)."""
    from effscale.transfer.config import resolve_transfer_config
    from effscale.runs import RunDir
    from effscale.transfer.train import transfer

    data = dataset(n, n_val)
    times = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, strategy in (("probe_cold", "linear-probe"), ("frozen", "last-layers"), ("probe_warm", "linear-probe")):
            config = resolve_transfer_config(weights="none", strategy=strategy, last_layers=2, image_size=image_size,
                                             epochs=epochs, batch_size=64, augment=(), schedule="constant",
                                             cache_dir=cache)
            with tempfile.TemporaryDirectory() as tmp:
                run = RunDir(Path(tmp))
                t = time.perf_counter()
                transfer(config, run, progress=False, data=data)
                total = time.perf_counter() - t
                state = json.loads((run.path / "checkpoints" / "state.json").read_text())
                # The 5 epochs (+ the probe's feature pass), without model building and the final
                # evaluation, which all runs pay alike.
                loop = sum(r["epoch_time_s"] for r in state["history"]) + state["extra"].get("feature_time_s", 0.0)
                times[label] = (total, loop)
    frozen = times["frozen"]
    return {"train_images": n, "val_images": n_val, "image_size": image_size, "epochs": epochs,
            **{f"{k}_total_s": round(v[0], 1) for k, v in times.items()},
            **{f"{k}_epochs_s": round(v[1], 1) for k, v in times.items()},
            "speedup_cold_total": round(frozen[0] / times["probe_cold"][0], 2),
            "speedup_cold_epochs": round(frozen[1] / times["probe_cold"][1], 2),
            "speedup_warm_total": round(frozen[0] / times["probe_warm"][0], 2),
            "speedup_warm_epochs": round(frozen[1] / times["probe_warm"][1], 2)}


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        _child(argv[1], int(argv[2]), int(argv[3]), int(argv[4]))
        return
    chosen = argv or ["efficiency", "group", "probe"]
    for name in chosen:
        result = {"efficiency": efficiency, "group": group, "probe": probe}[name]()
        print(json.dumps({name: result}), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main(sys.argv[1:])
