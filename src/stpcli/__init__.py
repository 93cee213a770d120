"""stp: Spatio-Temporal Pruning for one-time-step spiking neural networks."""

__version__ = "0.1.0"
