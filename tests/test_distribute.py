"""``--distribute`` with two replicas on a CPU-only machine: TensorFlow's MirroredStrategy
over two logical CPU devices, and Keras's DataParallel under JAX over two host devices.

Each run happens in its own subprocess (device counts are fixed when the backend starts).
The checks: every global batch is split in two per-replica halves, the two halves are
the batch the one-replica run trains on at that step, the metrics are aggregated over both
replicas, and the history and weights match a one-replica run of the same seed to float
rounding on both backends. Dropout, stochastic depth and augmentation are off and
BatchNorm is frozen, so the only difference left between the runs is the order in which
per-replica gradients and metric sums are added. The optimizer is SGD, whose step is
proportional to the gradient, so a gradient summed instead of averaged over the replicas
would show as a doubled step (Adam's normalised step would hide it).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from effscale.net.arch import NetworkSpec, StageSpec

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32
IMAGES = 128

SCRIPT = textwrap.dedent("""
    import json, os, sys
    backend, replicas, run_dir, variant, out = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
    seen = []
    if backend == "tensorflow":
        import tensorflow as tf
        if replicas > 1:
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        import keras
        original = keras.Model.train_step

        def train_step(self, data):
            # Runs once per replica per step: record the per-replica batch size, replica id
            # and a fingerprint of the images (their pixel sum, exact in int64).
            ctx = tf.distribute.get_replica_context()
            rid = tf.cast(tf.convert_to_tensor(ctx.replica_id_in_sync_group if ctx else 0), tf.int32)
            total = tf.reduce_sum(tf.cast(data[0], tf.int64))
            tf.py_function(lambda n, r, t: seen.append([int(n), int(r), int(t)]) or 0,
                           [tf.shape(data[0])[0], rid, total], [tf.int32])
            return original(self, data)

        keras.Model.train_step = train_step
    else:
        import jax
        import keras
        from keras.src.backend.jax import distribution_lib
        original = distribution_lib.distribute_data_input

        def distribute(batch, layout, batch_dim_name):
            array = original(batch, layout, batch_dim_name)
            if array.ndim == 4:  # the images, not the labels
                seen.append([[int(s.data.shape[0]), str(s.device)] for s in array.addressable_shards])
            return array

        distribution_lib.distribute_data_input = distribute
    from effscale.runs import RunDir
    from effscale.transfer.config import resolve_transfer_config
    from effscale.transfer.train import transfer
    config = resolve_transfer_config("default", "smoke", variant=variant, strategy="full", epochs=2,
                                     batch_size=%(batch)d, limit_train=%(images)d, limit_val=64, augment=(),
                                     dropout=0.0, freeze_bn=True, optimizer="sgd",
                                     learning_rate=0.5)
    from pathlib import Path
    run = RunDir(Path(run_dir))
    run.path.mkdir(parents=True, exist_ok=True)
    transfer(config, run, progress=False, distribute=replicas > 1)
    json.dump({"seen": seen, "devices": len(keras.distribution.list_devices()) if backend == "jax" else None},
              open(out, "w"))
""") % {"batch": BATCH, "images": IMAGES}


def _variant(path: Path) -> Path:
    spec = NetworkSpec(stem_filters=8, stages=(StageSpec(3, 1, 8, 8, 1, 1), StageSpec(3, 1, 8, 16, 2, 2)),
                       head_filters=32, resolution=32, dropout_rate=0.0, drop_connect_rate=0.0)
    path.write_text(json.dumps({"schema": "effscale/variant@1", "name": "tiny", "network": spec.to_dict()}))
    return path


def _start(tmp_path: Path, backend: str, replicas: int, variant: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT),
           "EFFSCALE_DATA_CACHE": str(tmp_path / f"cache-{replicas}")}
    if backend == "jax":
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={replicas}"
        env["JAX_PLATFORMS"] = "cpu"
    with log.open("w") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-c", SCRIPT, backend, str(replicas),
                                 str(tmp_path / f"{backend}-{replicas}"), str(variant),
                                 str(tmp_path / f"{backend}-{replicas}.json")],
                                stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=tmp_path)


def _run_both(tmp_path: Path, backend: str) -> list[tuple[list[dict], dict]]:
    """The one- and two-replica runs, side by side: each is mostly a single-threaded start-up
    and trace, so on two cores the pair takes little longer than one."""
    variant = _variant(tmp_path / "tiny.json")  # written once, before either run reads it
    logs = {replicas: tmp_path / f"{backend}-{replicas}.log" for replicas in (1, 2)}
    procs = {replicas: _start(tmp_path, backend, replicas, variant, logs[replicas]) for replicas in (1, 2)}
    results = []
    try:
        for proc in procs.values():  # files, not pipes: a full pipe would stall the run not being read
            proc.wait(timeout=600)
    finally:
        for proc in procs.values():
            proc.kill()
    for replicas, proc in procs.items():
        assert proc.returncode == 0, logs[replicas].read_text()[-3000:]
        with open(tmp_path / f"{backend}-{replicas}" / "history.csv", encoding="utf-8") as handle:
            history = list(csv.DictReader(handle))
        results.append((history, json.loads((tmp_path / f"{backend}-{replicas}.json").read_text())))
    return results


def _weights(run_dir: Path) -> list:
    import keras

    return keras.models.load_model(run_dir / "checkpoints" / "last.keras", compile=False).get_weights()


def _same_weights(tmp_path: Path, backend: str, tolerance: float, head_tolerance: float) -> None:
    """The trained weights agree as a whole, and the head agrees on its own.

    The head's kernel starts at zero, so all of it is training: a gradient summed over the
    replicas instead of averaged would double every SGD step and put the two heads about
    100% apart, and training on other batches put them 16% apart (measured under TensorFlow
    before its epochs' orders were made a function of the seed and epoch alone). With the
    same batches both backends agree to ~2e-7 in the head and ~5e-9 over all weights.
    """
    one, two = _weights(tmp_path / f"{backend}-1"), _weights(tmp_path / f"{backend}-2")
    head_one, head_two = one[-2], two[-2]
    assert np.abs(head_one).max() > 1e-3  # the Dense kernel trained
    assert np.linalg.norm(head_one - head_two) <= head_tolerance * np.linalg.norm(head_one)
    diff = np.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(one, two)))
    size = np.sqrt(sum(float(np.sum(a ** 2)) for a in one))
    assert diff <= tolerance * size


def _same_history(one: list[dict], two: list[dict], rel: float, exact_accuracy: bool) -> None:
    assert [r["epoch"] for r in one] == [r["epoch"] for r in two] == ["1", "2"]
    for a, b in zip(one, two):
        for key in ("loss", "val_loss"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=rel), key
        if exact_accuracy:
            for key in ("accuracy", "top5", "val_accuracy", "val_top5"):
                assert float(b[key]) == float(a[key]), key


def test_tensorflow_two_logical_cpus_split_batches_and_match_one_replica(tmp_path):
    (one, info_one), (two, info) = _run_both(tmp_path, "tensorflow")
    steps = 2 * (IMAGES // BATCH)
    # Every step ran on both replicas, each with half the global batch.
    assert sorted(r for _, r, _ in info["seen"]) == [0] * steps + [1] * steps
    assert {n for n, _, _ in info["seen"]} == {BATCH // 2}
    # Step k's two halves are the batch the one-replica run trained on at step k. Keras
    # draws one batch to build the model under a strategy, so a pipeline whose order
    # advanced with every iteration gave the two runs different batches.
    whole = [t for _, _, t in info_one["seen"]]
    halves = [[t for _, r, t in info["seen"] if r == rid] for rid in (0, 1)]
    # Distinct: each epoch is reshuffled, and the fingerprint tells the batches apart.
    assert len(whole) == steps and len(set(whole)) == steps
    assert [a + b for a, b in zip(*halves)] == whole
    # Only the order of the replicas' sums differs from one device: float rounding.
    _same_history(one, two, rel=1e-5, exact_accuracy=True)
    _same_weights(tmp_path, "tensorflow", tolerance=1e-4, head_tolerance=1e-3)


def test_jax_two_host_devices_split_batches_and_match_one_replica(tmp_path):
    pytest.importorskip("jax")
    (one, info_one), (two, info) = _run_both(tmp_path, "jax")
    assert info["devices"] == 2 and info_one["seen"] == []  # one replica: no distribution at all
    train_batches = [b for b in info["seen"] if sum(n for n, _ in b) == BATCH]
    assert len(train_batches) >= 2 * (IMAGES // BATCH)
    for shards in info["seen"]:
        assert len(shards) == 2 and len({d for _, d in shards}) == 2  # two devices, one half each
        assert shards[0][0] == shards[1][0]
    # JAX reduces the two shards' gradients as one batch: the runs agree to float rounding.
    _same_history(one, two, rel=1e-5, exact_accuracy=True)
    _same_weights(tmp_path, "jax", tolerance=1e-4, head_tolerance=1e-3)
