"""Environment defaults that must be in place before Keras is first imported.

Every module that imports Keras calls ``set_defaults()`` at its top; a user's own
settings always win.
"""

import os


def set_defaults() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) would bury effscale's output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
