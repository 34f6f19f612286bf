"""Round-robin timing of several targets, each loaded once, each in its own process.

Why interleave: this kind of machine changes speed over seconds to tens of seconds
(docs/bench.md). Timing model A for a second and then model B for a second compares two
moments as much as two models. Here every target is loaded and warmed up first, then the
timed runs go in blocks, A1 B1 A2 B2 ..., with at least ``block_gap_s`` between the starts
of one target's blocks, so each target's blocks cover the same stretch of time.

Why a process per target: TensorFlow's allocator keeps memory a previous model freed, so
in one process only the first model's memory figure is true, and traced graphs of earlier
models would stay alive beside later ones. The processes wait idle while others are timed.
"""

from __future__ import annotations

import multiprocessing
import time

from effscale.bench.measure import BenchSettings, Session, set_threads
from effscale.bench.targets import Target


def block_sizes(runs: int, blocks: int) -> list[int]:
    """``runs`` split into ``blocks`` near-equal parts (the first ones take the remainder)."""
    base, extra = divmod(runs, blocks)
    return [base + (i < extra) for i in range(blocks)]


class _Remote:
    """A ``Session`` in a spawned process, driven over a pipe."""

    def __init__(self, target: Target, settings: BenchSettings):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, target, settings), daemon=True)
        self.process.start()
        child.close()

    def _call(self, *message):
        self.conn.send(message)
        try:
            kind, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the bench process died (exit code {self.process.exitcode})") from None
        if kind == "error":
            raise value
        return value

    def start(self):
        return self._call("start")

    def block(self, n: int):
        return self._call("block", n)

    def finish(self) -> dict:
        record = self._call("finish")
        self.process.join(timeout=30)
        return record

    def close(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)


def _serve(conn, target: Target, settings: BenchSettings) -> None:
    from effscale.backend import native_stderr_captured, set_defaults

    set_defaults()
    # TensorFlow's C++ notices (absl, oneDNN) come at import and again at the first op;
    # in the parent they would interleave with the table. Errors still reach the parent.
    with native_stderr_captured():
        info = set_threads(settings.threads)  # before TensorFlow runs its first op
        session = Session(target, settings)
        while True:
            command, *args = conn.recv()
            try:
                value = getattr(session, command)(*args)
                if command == "finish":
                    value = value | info
            except Exception as exc:  # noqa: BLE001 - sent to the parent, raised there
                conn.send(("error", exc))
                return
            conn.send(("ok", value))
            if command == "finish":
                return


def measure_all(targets: list[Target], settings: BenchSettings, isolated: bool = True,
                progress=None) -> list[dict]:
    """One record per target, latency blocks interleaved across targets."""
    thread_info = {} if isolated else set_threads(settings.threads)
    sessions = []
    try:
        for target in targets:  # loaded one at a time: loading is not timed against anything
            if progress:
                progress(f"loading {target.name} ({target.kind}) ...")
            session = _Remote(target, settings) if isolated else Session(target, settings)
            sessions.append(session)
            session.start()
        last_start = [float("-inf")] * len(sessions)
        for n in block_sizes(settings.runs, min(settings.blocks, settings.runs)):
            for i, session in enumerate(sessions):
                wait = last_start[i] + settings.block_gap_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                last_start[i] = time.monotonic()
                session.block(n)
        return [session.finish() | thread_info for session in sessions]
    finally:
        for session in sessions:
            if isinstance(session, _Remote):
                session.close()


def measure_isolated(target: Target, settings: BenchSettings) -> dict:
    """One target in a fresh process (what ``scale --target-latency`` times per phi)."""
    return measure_all([target], settings)[0]
