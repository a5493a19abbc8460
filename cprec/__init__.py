"""cprec: an experiment runner for dynamic-precision (cyclic precision) training research."""

__version__ = "0.1.0"
