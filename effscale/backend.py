"""Environment defaults that must be in place before Keras is first imported.

Every module that imports Keras calls ``set_defaults()`` at its top; a user's own
settings always win.

TensorFlow's native start-up lines ("All log messages before absl::InitializeLog() is
called are written to STDERR", oneDNN notices) are written by C++ straight to file
descriptor 2 while ``tensorflow`` is imported; neither ``TF_CPP_MIN_LOG_LEVEL`` nor any
absl variable silences them in TensorFlow 2.16+. So the first import of ``tensorflow``
runs with descriptor 2 pointed at a temporary file; what it caught is kept in
``native_startup_output`` and written to a run's effscale.log (``RunDir.attach_log``).
Python-level output is untouched. Setting ``TF_CPP_MIN_LOG_LEVEL`` to 0 or 1 yourself
turns the capture off.

On x86-64, TensorFlow turns its oneDNN kernels on by default only on CPUs with the newest
vector extensions (AVX512-VNNI, AMX); on an AVX2-only CPU they stay off, and B0 trained at
1/1.42 of the speed it reaches with them (benchmarks/onednn.py, docs/performance.md). So
``TF_ENABLE_ONEDNN_OPTS=1`` is set unless the user set it. The grid's one-thread workers
are the exception (``onednn_setting``): for the small proxy networks oneDNN made a
one-thread step slower (0.71x on an AVX2 AMD EPYC, 0.94x on an AVX-512 Xeon).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import platform
import sys
import tempfile

native_startup_output: list[str] = []
_X86_64 = platform.machine().lower() in ("x86_64", "amd64")  # where TensorFlow has oneDNN kernels
_ONEDNN_SET_BY_USER = "TF_ENABLE_ONEDNN_OPTS" in os.environ  # read before set_defaults() sets it


def onednn_setting(threads: int) -> str | None:
    """``TF_ENABLE_ONEDNN_OPTS`` for a TensorFlow process with ``threads`` threads; None: leave as is.

    One thread training a small network is faster without oneDNN (benchmarks/onednn.py
    ``--threads 1 --network proxy``); a user's own setting always wins.
    """
    if _ONEDNN_SET_BY_USER or not _X86_64:
        return None
    return "0" if threads == 1 else "1"


def set_defaults() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) would bury effscale's output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if _X86_64:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1") and "tensorflow" not in sys.modules:
        if not any(isinstance(finder, _QuietTensorFlow) for finder in sys.meta_path):
            sys.meta_path.insert(0, _QuietTensorFlow())


def backend_name() -> str:
    """The Keras backend a Keras import here would use, without importing Keras (about 0.7 GB).

    Keras takes ``KERAS_BACKEND`` over its config file, and ``set_defaults`` sets it.
    """
    set_defaults()
    return os.environ["KERAS_BACKEND"]


@contextlib.contextmanager
def native_stderr_captured():
    """Point descriptor 2 at a temporary file for the duration; keep what was written."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            if text.strip():
                native_startup_output.append(text)


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` like the normal machinery, but executes it under the capture."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders answer from here on
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            execute = spec.loader.exec_module

            def exec_module(module):
                with native_stderr_captured():
                    execute(module)

            spec.loader.exec_module = exec_module
        return spec
