"""absa: elastic, adaptive-batch-size training of image classifiers on a Ray cluster."""

__version__ = "0.1.0"
