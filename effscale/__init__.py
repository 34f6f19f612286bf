"""effscale: EfficientNet-style compound model scaling as a command-line tool.

Importing this package is cheap: it pulls in nothing heavy (no Keras, no pandas).
"""

__version__ = "0.1.0"
