"""Architectures: a registry of specs, the layer plan both ANN and SNN are built from, and surgery."""
