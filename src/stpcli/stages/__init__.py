"""Pipeline stages: each one a function from checkpoint (or data) to checkpoint."""
