"""Data layer: the embedded synthetic dataset, ImageFolder datasets, packs, splits and batches."""
