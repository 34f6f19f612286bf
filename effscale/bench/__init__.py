"""Measured cost beside the arithmetic one: latency, throughput and memory per variant.

``targets``, ``stats``, ``search`` and ``report`` need no Keras; ``measure`` imports Keras
or an interpreter inside its functions, so importing this package is cheap.
"""
