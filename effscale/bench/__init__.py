"""Measured cost beside the arithmetic one: latency, throughput and memory per variant.

``targets`` and ``stats`` are pure Python (no Keras); ``measure`` and ``target_latency``
import Keras or an interpreter inside their functions, so importing this package is cheap.
"""
