"""How well the pseudo-anomaly mask covers what changed (``python -m benchmarks.masks``)."""
