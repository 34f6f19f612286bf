"""Pretrained weights: the safe PyTorch reader and loading into Keras."""
