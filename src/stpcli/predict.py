"""Apply a trained checkpoint (ANN or SNN) to new images: top-k classes with probabilities.

Images are decoded exactly as in training (shorter side to the checkpoint's
size, centre crop, its normalisation). No split or fingerprint checks: these
are new images. An unreadable image is reported and counted; the rest are
still predicted.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from stpcli.checkpoint import Checkpoint
from stpcli.data.imagefolder import IMAGE_EXTENSIONS
from stpcli.data.loader import normalise
from stpcli.data.source import image_decoder
from stpcli.errors import StpError
from stpcli.files import first_line, readable_file
from stpcli.report import method_of
from stpcli.restore import input_stats, model_from_checkpoint
from stpcli.run import Run


def find_images(paths: list[Path]) -> list[Path]:
    """Image files named directly, and those under named folders (recursively), in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
        else:
            found.append(readable_file(path))
    if not found:
        raise StpError(f"no image files under {', '.join(map(str, paths))}")
    return found


def check_options(top_k: int, batch_size: int) -> None:
    if top_k < 1:
        raise StpError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise StpError(f"--batch-size must be positive, got {batch_size}")


def predict(run: Run, ckpt: Checkpoint, files: list[Path], top_k: int = 3, batch_size: int = 64,
            advance: Callable[[int], None] | None = None) -> dict:
    """Top-k classes of each image file (``find_images`` lists the files under folders)."""
    check_options(top_k, batch_size)
    device = run.runtime.device
    model = model_from_checkpoint(ckpt).to(device).eval()
    stats = input_stats(ckpt.record).to(device)
    classes = ckpt.classes
    k = min(top_k, len(classes))
    predictions, unreadable = [], []

    read = image_decoder(ckpt.record)

    def decode(path: Path):
        try:
            return read(path), None
        except Exception as exc:  # any decoder failure: report this file, keep going
            return None, first_line(exc, 160)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            images, kept = [], []
            for path, (image, problem) in zip(chunk, pool.map(decode, chunk)):
                if image is None:
                    unreadable.append({"path": str(path), "reason": problem})
                else:
                    images.append(image)
                    kept.append(path)
            if images:
                with torch.no_grad(), run.runtime.autocast():
                    logits = model(normalise(torch.stack(images).to(device), stats))
                probabilities, indices = torch.softmax(logits.float(), dim=1).topk(k, dim=1)
                for path, probs, idx in zip(kept, probabilities.tolist(), indices.tolist()):
                    predictions.append({"path": str(path),
                                        "top": [{"class": classes[i], "probability": p} for p, i in zip(probs, idx)]})
            if advance is not None:
                advance(len(chunk))
    return {"checkpoint": str(ckpt.path), "kind": ckpt.kind, "method": method_of(ckpt.record),
            "timesteps": ckpt.timesteps, "images": len(predictions), "unreadable": unreadable,
            "predictions": predictions}
