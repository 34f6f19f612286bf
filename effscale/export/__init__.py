"""Deployable artifacts from effscale models: SavedModel, TFLite (float32/float16/int8), ONNX.

``artifacts`` (what a path holds) is pure Python; ``convert``, ``runtimes`` and ``verify``
import TensorFlow and the interpreters inside their functions.
"""
