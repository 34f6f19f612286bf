"""Pretrained weights: the ``--weights`` resolver, the safe PyTorch reader, loading into Keras."""
