"""ImageNet weights in torchvision's layout, from a local file (no download).

torchvision's ``vgg11_bn``/``vgg16_bn`` and ``resnet18``/``resnet34`` state dicts are
matched to our layers in order: convolutions (and their BatchNorms) one to one,
the classifier skipped (its shape depends on classes and image size). Only
width 1.0 models match. ``.safetensors`` files are read directly; ``.pth``
files with ``torch.load(weights_only=True)``, which never runs code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from stpcli.errors import StpError
from stpcli.files import first_line
from stpcli.models.ann import ANN


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise StpError(f"--pretrained {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else {}
    except Exception as exc:
        raise StpError(f"--pretrained {path} is not a readable weights file ({first_line(exc, 120)})") from exc


def _natural(key: str):
    return [int(part) if part.isascii() and part.isdigit() else part for part in key.split(".")]


def _bn_prefix(state: dict[str, torch.Tensor], conv_prefix: str) -> str | None:
    """torchvision names a conv's BatchNorm `...bnK.` (ResNet) or by the next index (VGG, downsample)."""
    parts = conv_prefix.rstrip(".").split(".")
    candidates = []
    if parts[-1].startswith("conv"):
        candidates.append(".".join(parts[:-1] + ["bn" + parts[-1][4:]]) + ".")
    if parts[-1].isascii() and parts[-1].isdigit():
        candidates.append(".".join(parts[:-1] + [str(int(parts[-1]) + 1)]) + ".")
    return next((c for c in candidates if c + "running_mean" in state), None)


def _conv_bn_groups(state: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, dict[str, torch.Tensor] | None]]:
    """(conv weight, its BatchNorm tensors) in module order, classifier excluded.

    safetensors files list keys alphabetically, so order comes from a natural sort of
    the names (features.2 < features.10; conv1 < conv2 < downsample).
    """
    convs = sorted((k for k, v in state.items() if k.endswith("weight") and v.dim() == 4
                    and not k.startswith(("classifier", "fc."))), key=_natural)
    groups = []
    for key in convs:
        prefix = key[: -len("weight")]
        bn = _bn_prefix(state, prefix)
        groups.append((state[key], None if bn is None else
                       {n: state[bn + n] for n in ("weight", "bias", "running_mean", "running_var")}))
    return groups


def load_pretrained(model: ANN, path: str) -> int:
    source = _conv_bn_groups(_read(Path(path)))
    targets = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            targets.append(module)
    bns = {id(c): b for c, b in _paired_bns(model)}
    if len(source) != len(targets):
        raise StpError(f"--pretrained has {len(source)} convolutions, the model {len(targets)}; "
                       "use the matching torchvision architecture (vgg*_bn / resnet18 / resnet34) and --width 1")
    loaded = 0
    with torch.no_grad():
        for (weight, bn), conv in zip(source, targets):
            if weight.shape != conv.weight.shape:
                raise StpError(f"--pretrained convolution shape {tuple(weight.shape)} does not match the model's "
                               f"{tuple(conv.weight.shape)}; use --width 1")
            conv.weight.copy_(weight)
            loaded += 1
            target_bn = bns.get(id(conv))
            if bn is not None and target_bn is not None:
                for name, tensor in bn.items():
                    getattr(target_bn, name).copy_(tensor)
                    loaded += 1
    return loaded


def _paired_bns(model: ANN):
    """Each convolution with the BatchNorm that follows it in module order."""
    previous = None
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            previous = module
        elif isinstance(module, torch.nn.BatchNorm2d) and previous is not None:
            yield previous, module
            previous = None
