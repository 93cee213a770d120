"""The ANN built from a plan: conv + BN + ReLU, average or max pooling, dropout in the classifier.

Every layer knows how to fold its BatchNorm into conv weights and biases
(``folded()``), which is all the SNN conversion needs from it.
"""

from __future__ import annotations

import torch
from torch import nn

from stpcli.models.plan import PlanEntry, build_plan, projects
from stpcli.spec import ModelSpec


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.BatchNorm2d):
    """W' = W * g/sqrt(var+eps) per output channel; b' = beta + (b - mean) * g/sqrt(var+eps)."""
    running_mean, running_var = _running_stats(bn)
    scale = bn.weight / torch.sqrt(running_var + bn.eps)
    folded_weight = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    base = bias if bias is not None else torch.zeros_like(running_mean)
    folded_bias = bn.bias + (base - running_mean) * scale
    return folded_weight.detach().clone(), folded_bias.detach().clone()


def _running_stats(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A BatchNorm's running mean and variance (stp's BatchNorms always track them)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics")
    return bn.running_mean, bn.running_var


class ConvLayer(nn.Module):
    def __init__(self, entry: PlanEntry):
        super().__init__()
        self.conv = nn.Conv2d(entry["in"], entry["out"], entry["kernel"], entry["stride"], entry["padding"], bias=False)
        self.bn = nn.BatchNorm2d(entry["out"])

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))

    def folded(self) -> dict[str, torch.Tensor]:
        weight, bias = fold_batchnorm(self.conv.weight, None, self.bn)
        return {"conv.weight": weight, "conv.bias": bias}

    def init_identity(self) -> None:
        """Dirac kernel + neutral BN: the layer passes its (non-negative) input through."""
        nn.init.dirac_(self.conv.weight)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        running_mean, running_var = _running_stats(self.bn)
        running_mean.zero_()
        running_var.fill_(1.0 - self.bn.eps)


class Projection(nn.Module):
    """A residual block's 1x1 conv + BN shortcut (tensors ``shortcut.conv.*``, ``shortcut.bn.*``)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, stride, 0, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    def __init__(self, entry: PlanEntry):
        super().__init__()
        cin, cout, stride = entry["in"], entry["out"], entry["stride"]
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = Projection(cin, cout, stride) if projects(entry) else None

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))

    def folded(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for name, conv, bn in (("conv1", self.conv1, self.bn1), ("conv2", self.conv2, self.bn2)):
            tensors[f"{name}.weight"], tensors[f"{name}.bias"] = fold_batchnorm(conv.weight, None, bn)
        if self.shortcut is not None:
            tensors["shortcut.weight"], tensors["shortcut.bias"] = fold_batchnorm(
                self.shortcut.conv.weight, None, self.shortcut.bn)
        return tensors

    def init_identity(self) -> None:
        """Zero the last BN's scale and shift: the block reduces to ReLU(x) = x for x >= 0."""
        nn.init.zeros_(self.bn2.weight)
        nn.init.zeros_(self.bn2.bias)


class HiddenLinear(nn.Module):
    def __init__(self, entry: PlanEntry):
        super().__init__()
        self.fc = nn.Linear(entry["in"], entry["out"])
        self.dropout = nn.Dropout(entry["dropout"])

    def forward(self, x):
        return self.dropout(torch.relu(self.fc(x)))

    def folded(self) -> dict[str, torch.Tensor]:
        return {"fc.weight": self.fc.weight.detach().clone(), "fc.bias": self.fc.bias.detach().clone()}


class OutputLinear(HiddenLinear):
    def __init__(self, entry: PlanEntry):
        nn.Module.__init__(self)
        self.fc = nn.Linear(entry["in"], entry["out"])

    def forward(self, x):
        return self.fc(x)


def pooling(entry: PlanEntry) -> nn.Module:
    """A pool entry's module, for the ANN and the SNN alike (on spikes, max pooling is an OR)."""
    if entry["mode"] == "max":
        return nn.MaxPool2d(entry["kernel"], entry["stride"], entry["padding"])
    return nn.AvgPool2d(entry["kernel"], entry["stride"], entry["padding"])


class GlobalPool(nn.Module):
    def __init__(self, entry: PlanEntry):
        super().__init__()

    def forward(self, x):
        return x.mean(dim=(2, 3))


class Flatten(nn.Flatten):
    def __init__(self, entry: PlanEntry):
        super().__init__()


ANN_LAYERS = {
    "conv": ConvLayer,
    "block": BasicBlock,
    "pool": pooling,
    "global_pool": GlobalPool,
    "flatten": Flatten,
    "fc": HiddenLinear,
    "output": OutputLinear,
}


class ANN(nn.Module):
    """A feed-forward network over the plan; ``layers.<i>`` is plan entry i."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.plan = build_plan(spec)
        self.layers = nn.ModuleList(ANN_LAYERS[entry["type"]](entry) for entry in self.plan)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def rebuilt(self, spec: ModelSpec) -> ANN:
        """A fresh ANN of another spec (Unit surgery)."""
        return ANN(spec)

    def after_step(self) -> None:
        """Hook called after each optimiser step (the SNN clamps leaks here)."""
