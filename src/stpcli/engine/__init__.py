"""The training engine: devices and DDP, the epoch loop, evaluation, resumable training state."""
