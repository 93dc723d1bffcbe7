"""Benchmark and optimise DenseNet-121 ImageNet inference."""

__version__ = "0.1.0"
