"""Worker processes for the local executor: two trials in flight, memory that cannot grow.

Why processes: TensorFlow keeps every graph it traced alive until the process exits, so
one process running a whole search grows by every trial's graphs (10 GB on the default
search). And a trial leaves a core idle while it traces its graph, which is single-threaded.
So ``WorkerPool`` runs trials in ``workers`` spawned processes, each with
``cpu_count // workers`` TensorFlow threads (so two workers do not fight over the cores),
and replaces a worker by a fresh one once it has run ``trials_per_worker`` trials or its
memory has grown by more than ``rss_growth_mb`` since its first trial.

Every trial of one candidate in a batch (its seeds) goes to the same worker, one after
another, so the trainer's per-process model cache lets the repeats skip the graph trace.
A free worker also takes the candidate it ran last before any other (a promotion to the
next rung, the last rung's next seed), for the same reason. A worker is replaced only
between candidates.

The driver (the search loop) still appends every status change to the trial log itself,
one trial at a time, so a kill -9 loses only the trials in flight. A worker that dies
(killed, out of memory) fails its trial with a one-line error and is replaced.

No Keras here: the worker imports whatever the trainer it unpickles needs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from multiprocessing.connection import Connection, wait

from effscale.backend import onednn_setting
from effscale.grid.search import TrialSpec

log = logging.getLogger("effscale.grid.workers")

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
TRIALS_PER_WORKER = 8  # a fresh process every few trials bounds what TF's traced graphs hold
# A worker whose resident memory has grown by more than this since its first trial is replaced
# before the next candidate, whatever its trial count: traced graphs grow it by hundreds of MB
# per trial. Growth, not size: what a worker holds after one trial (the runtime, the proxy
# dataset: 2 GB for Imagenette's 160 px images against under 1 GB for CIFAR's 32 px ones)
# stays for its life, and an absolute limit below it replaced the worker after every
# candidate. EFFSCALE_WORKER_GROWTH_MB overrides it (a bigger machine can keep workers longer).
# 250, not 500: a trial adds 0.4-0.6 GB on top of what its worker holds, and with 500 the
# default search's two workers and driver peaked at 4.1 GB (10-s samples), with 250 at 3.6 GB,
# in the same wall time and with the same results (docs/performance.md, 2026-12-05).
WORKER_GROWTH_MB = 250
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
# glibc malloc settings of a worker, each unless the user set it:
# - one arena. With glibc's arena per thread, TensorFlow's eager BatchNorm recalibration
#   (other threads than the training step, it seems) did not reuse the memory the step had
#   freed: a default proxy trial peaked at 1.42-1.44 GB instead of 1.75-1.78 GB, with the
#   same epoch times (benchmarks/grid_worker_memory.py --phases).
# - no mmap for tensors under 1 GiB, and no trimming inside a trial. glibc otherwise maps each
#   tensor over its (dynamic, at most 32 MB) threshold afresh and unmaps it when freed, so
#   every training step faulted in its activations again: 4-5.6 million minor page faults
#   against 1.0 million over three one-epoch trials, epochs 0.86-0.97x as long, the same
#   peaks (docs/performance.md). The worker still hands its free heap back after each trial.
MALLOC_SETTINGS = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
                   "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def malloc_environment(environ=None) -> dict[str, str]:
    """``MALLOC_SETTINGS``, with any of them already set in ``environ`` (default: this process's) kept."""
    environ = os.environ if environ is None else environ
    return {name: environ.get(name, value) for name, value in MALLOC_SETTINGS.items()}


def default_workers() -> int:
    """Two trials in flight on a machine with at least two cores, else one."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def remote_error(type_name: str, message: str) -> Exception:
    """An exception that prints as the worker's did (``TypeName: message``)."""
    return type(type_name, (Exception,), {})(message)


def serve(fd: int) -> None:
    """A worker's main loop: the trainer first, then one trial spec per message, None to stop.

    Started as ``python -c`` rather than by ``multiprocessing``, whose spawn re-imports the
    caller's ``__main__``: a notebook or an unguarded script calling ``effscale.grid.run``
    would start workers recursively.
    """
    conn = Connection(fd)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    run_trial = pickle.loads(conn.recv_bytes())
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:
            return
        began = time.perf_counter()
        try:
            reply = ("ok", run_trial(TrialSpec.from_dict(message)), None)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which records FAILED
            reply = ("error", type(exc).__name__, " ".join(str(exc).split()))
        # before the reply: the driver reads this process's memory when it arrives
        release_free_heap()
        conn.send((*reply, time.perf_counter() - began))


def release_free_heap() -> None:
    """Give the heap a trial freed back to the system (glibc keeps it otherwise): 0.2 GB a
    trial on the default proxy, resident memory the other worker can use while this one waits."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """End this worker once the driver is gone (killed, or ended by SIGTERM without cleanup).

    A worker in the middle of a trial would otherwise train on for minutes, orphaned, for a
    result nobody can record; the resumed search runs that trial again anyway.
    """
    while True:
        time.sleep(interval)
        if os.getppid() != parent:
            os._exit(1)


def _drain(stream, pid: int) -> None:
    for line in iter(stream.readline, b""):
        log.debug("worker %d: %s", pid, line.decode(errors="replace").rstrip())
    stream.close()


class _Worker:
    def __init__(self, trainer_bytes: bytes, threads: int):
        ours, theirs = socket.socketpair()
        env = dict(os.environ) | {name: str(threads) for name in THREAD_VARIABLES}
        env.update(malloc_environment(env))
        onednn = onednn_setting(threads)
        if onednn is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = onednn
        # the worker imports what this process would: the same effscale (an editable install or a
        # checkout) and the module defining the trainer (a notebook's, a test's)
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([PACKAGE_ROOT, *(p or os.getcwd() for p in sys.path)]))
        self.process = subprocess.Popen(
            [sys.executable, "-c", f"from effscale.grid.workers import serve; serve({theirs.fileno()})"],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        theirs.close()
        # What a worker prints (library warnings, TensorFlow's start-up lines) goes to the run's
        # log, as it would in one process, not over the progress display.
        threading.Thread(target=_drain, args=(self.process.stdout, self.process.pid), daemon=True).start()
        self.conn = Connection(ours.detach())
        self.conn.send_bytes(trainer_bytes)
        self.ran = 0
        self.first_rss: float | None = None  # resident MB after its first trial: the baseline of growth
        self.queue: list[TrialSpec] = []  # the rest of its candidate's trials
        self.last: str | None = None  # the candidate of its last trial: its trainer's cached model
        self.spec: TrialSpec | None = None  # the trial in flight
        self.began = 0.0

    def send(self, spec: TrialSpec) -> None:
        self.spec = spec
        self.began = time.perf_counter()
        self.conn.send(spec.to_dict())

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_mb(self) -> float | None:
        return process_rss_mb(self.process.pid)

    def stop(self, timeout: float = 5.0) -> None:
        try:
            if self.alive() and self.spec is None:
                self.conn.send(None)
                self.process.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if self.alive():
            self.process.kill()
        self.process.wait()
        self.conn.close()


def process_rss_mb(pid: int) -> float | None:
    """Resident memory now (Linux /proc; None elsewhere, where only the trial count applies)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def group_by_candidate(specs: list[TrialSpec]) -> list[list[TrialSpec]]:
    """Consecutive runs of one candidate's trials, in the order given (a worker takes a run)."""
    groups: list[list[TrialSpec]] = []
    for spec in specs:
        if groups and groups[-1][0].candidate.id == spec.candidate.id:
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


def _affine(groups: list[list[TrialSpec]], last: str | None) -> int:
    """Index of the first group of the candidate a worker ran last (its model is still
    compiled there, so its trial pays no trace), else 0: the order given.

    Never a later seed than the next group's: a seed-by-seed batch (the last rung, the
    scale-up check) starts every row's seed k before any row's seed k+1, so a run stopped
    early has compared every row on the same seeds.
    """
    for index, group in enumerate(groups):
        if group[0].candidate.id == last and group[0].seed <= groups[0][0].seed:
            return index
    return 0


class WorkerPool:
    """``workers`` processes running trials; the caller's ``start``/``finish`` log them."""

    def __init__(self, workers: int = 2, trials_per_worker: int | None = None, rss_growth_mb: float | None = None):
        self.size = max(1, int(workers))
        self.trials_per_worker = trials_per_worker or TRIALS_PER_WORKER
        self.rss_growth_mb = rss_growth_mb or float(os.environ.get("EFFSCALE_WORKER_GROWTH_MB") or WORKER_GROWTH_MB)
        self.threads = max(1, (os.cpu_count() or 1) // self.size)
        self.slots: list[_Worker | None] = [None] * self.size
        self._trainer: tuple[int, bytes] | None = None
        self.started = 0  # worker processes started (for tests and benchmarks)
        self.replaced_for_memory = 0

    def _fresh(self, slot: int, run_trial) -> _Worker:
        old = self.slots[slot]
        if old is not None:
            old.stop()
        if self._trainer is None or self._trainer[0] != id(run_trial):
            self._trainer = (id(run_trial), pickle.dumps(run_trial))
        self.slots[slot] = _Worker(self._trainer[1], self.threads)
        self.started += 1
        return self.slots[slot]

    def run(self, specs: list[TrialSpec], run_trial, start, finish) -> None:
        if self._trainer is not None and self._trainer[0] != id(run_trial):
            self.close()  # another trainer: its workers hold the old one
        groups = group_by_candidate(specs)
        try:
            while True:
                for slot in range(self.size):
                    worker = self.slots[slot]
                    if worker is not None and (worker.spec is not None or worker.queue):
                        continue
                    if not groups:
                        continue
                    if worker is None or not worker.alive() or self._spent(worker):
                        worker = self._fresh(slot, run_trial)
                    worker.queue = groups.pop(_affine(groups, worker.last))
                busy = [w for w in self.slots if w is not None and (w.spec is not None or w.queue)]
                if not busy:
                    return
                for worker in busy:
                    if worker.spec is None:
                        spec = worker.queue.pop(0)
                        start(spec)
                        worker.send(spec)
                ready = wait([w.conn for w in busy])
                for worker in busy:
                    if worker.conn in ready:
                        self._receive(worker, finish, groups)
        finally:
            for worker in self.slots:
                if worker is not None and worker.spec is not None:  # interrupted: nothing to wait for
                    worker.process.kill()
            for slot, worker in enumerate(self.slots):
                if worker is not None and worker.spec is not None:
                    worker.spec = None
                    worker.stop()
                    self.slots[slot] = None

    def _spent(self, worker: _Worker) -> bool:
        """Replace it before its next candidate: enough trials, or its memory grew too much."""
        if worker.ran >= self.trials_per_worker:
            return True
        rss = worker.rss_mb()
        if rss is not None and worker.first_rss is not None and rss - worker.first_rss > self.rss_growth_mb:
            log.debug("worker %d holds %.0f MB after %d trials, %.0f MB more than after its first (limit %.0f MB): "
                      "replaced", worker.process.pid, rss, worker.ran, rss - worker.first_rss, self.rss_growth_mb)
            self.replaced_for_memory += 1
            return True
        return False

    def _receive(self, worker: _Worker, finish, groups: list) -> None:
        try:
            kind, payload, message, seconds = worker.conn.recv()
        except (EOFError, OSError):
            self._died(worker, finish, groups)
            return
        spec, worker.spec = worker.spec, None
        worker.ran += 1
        worker.last = spec.candidate.id
        if worker.first_rss is None:
            worker.first_rss = worker.rss_mb()
        if kind == "ok":
            finish(spec, payload, None, seconds)
        else:
            finish(spec, None, remote_error(payload, message), seconds)

    def _died(self, worker: _Worker, finish, groups: list) -> None:
        spec, worker.spec = worker.spec, None
        code = worker.process.wait()
        rest, worker.queue = worker.queue, []
        if rest:
            groups.insert(0, rest)
        slot = self.slots.index(worker)
        worker.stop()
        self.slots[slot] = None
        if spec is not None:
            finish(spec, None, remote_error("WorkerDied", f"the worker process running it exited with code {code}"),
                   time.perf_counter() - worker.began)

    def close(self) -> None:
        for slot, worker in enumerate(self.slots):
            if worker is not None:
                worker.stop()
                self.slots[slot] = None
