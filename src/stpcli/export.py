"""Taking a model out of stp: NIR for SNNs (neuromorphic tools), ONNX for ANNs.

NIR mapping (``nir`` package; shapes exclude the batch dimension):

* convolutions, hidden and output linear layers -> ``Conv2d`` / ``Affine`` with
  the BN-folded weights and biases; average pooling -> ``AvgPool2d``; global
  average pooling -> ``AvgPool2d`` over the whole map then ``Flatten``.
* NIR spikes are binary, so a layer that reads spikes of amplitude V (stp's
  default ``--spike-amplitude threshold``) gets V folded into its weights; an
  identity shortcut becomes a ``Scale`` node. Edges into one node are summed
  (a residual block's second neuron receives conv2 and the shortcut).
* each neuron layer -> ``LIF`` (leak < 1) or ``IF`` (leak = 1), read as the
  Euler step of NIR's continuous-time equation with dt = 1 and v_leak = 0:
  ``tau dv/dt = -v + r I``  gives  ``v(t) = (1 - 1/tau) v(t-1) + (r/tau) I(t)``,
  so ``tau = 1 / (1 - leak)`` and ``r = tau`` reproduce stp's
  ``u(t) = leak * r(t-1) + I(t)``; ``v_threshold`` = V.

Limits, stated in every node's and the graph's metadata: NIR has no soft reset
(stp subtracts V on a spike: ``reset: "subtract"``), no initial membrane (stp
starts at ``initial_membrane`` x V), and no notion of the time step; the input
is the same analog image at every one of ``timesteps`` steps (direct encoding)
and the logits are the output node's values summed over those steps.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stpcli import __version__
from stpcli.checkpoint import Checkpoint
from stpcli.defaults import EXPORT_FORMATS as FORMATS
from stpcli.errors import StpError
from stpcli.files import atomic_write_bytes
from stpcli.models.plan import synaptic_layers
from stpcli.restore import model_from_checkpoint
from stpcli.spiking.network import SNN
from stpcli.spiking.neuron import LIF


def _need(module: str, fmt: str):
    try:
        return __import__(module)
    except ImportError:
        raise StpError(f"--format {fmt} needs the {module} package: pip install 'stpcli[export]'") from None


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy().astype(np.float32)


def _neuron_node(nir, neuron: LIF, initial: float, shape: tuple):
    """NIR neuron parameters are per neuron: stp's per-layer scalars, broadcast to the layer's shape."""
    threshold, leak = float(neuron.threshold), float(neuron.leak)
    metadata = {"reset": "subtract", "initial_membrane": initial * threshold, "dt": 1.0, "stp_leak": leak,
                "spike_amplitude": 1.0}

    def full(value: float) -> np.ndarray:
        return np.full(shape, value, dtype=np.float32)

    if leak >= 1.0:
        return nir.IF(r=full(1.0), v_threshold=full(threshold), metadata=metadata)
    tau = 1.0 / (1.0 - leak)
    return nir.LIF(tau=full(tau), r=full(tau), v_leak=full(0.0), v_threshold=full(threshold), metadata=metadata)


@torch.no_grad()
def nir_graph(snn: SNN):
    """The SNN as a NIR graph (see the module docstring for the mapping)."""
    import nir

    snn = snn.eval()
    amplitudes = {name: (1.0 if snn.settings.binary else float(m.threshold)) for name, m in snn.neurons()}
    sources = {layer.name: layer.source for layer in synaptic_layers(snn.plan, snn.spec["image_size"])}
    initial = snn.settings.initial_membrane
    size = snn.spec["image_size"]
    nodes = {"input": nir.Input(input_type={"input": np.array([3, size, size])})}
    edges: list[tuple[str, str]] = []
    previous: str = "input"
    shape: tuple[int, ...] = (3, size, size)

    def weighted(name: str, weight: torch.Tensor) -> np.ndarray:
        source = sources[name]
        return _array(weight * (amplitudes[source] if source else 1.0))

    def conv(name: str, module: Any, feed: str, in_shape) -> tuple[str, tuple[int, ...]]:
        nodes[name] = nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=weighted(name, module.weight),
                                 stride=module.stride, padding=module.padding, dilation=1, groups=1,
                                 bias=_array(module.bias))
        edges.append((feed, name))
        h = (in_shape[1] + 2 * module.padding[0] - module.kernel_size[0]) // module.stride[0] + 1
        w = (in_shape[2] + 2 * module.padding[1] - module.kernel_size[1]) // module.stride[1] + 1
        return name, (module.out_channels, h, w)

    def neuron(name: str, module: LIF, feeds: list[str], shape: tuple) -> str:
        nodes[name] = _neuron_node(nir, module, initial, shape)
        edges.extend((feed, name) for feed in feeds)
        return name

    layer: Any  # the SNN module of the plan entry (its type follows the entry's type)
    for index, (entry, layer) in enumerate(zip(snn.plan, snn.layers)):
        prefix, kind = f"layers.{index}", entry["type"]
        if kind == "conv":
            current, shape = conv(f"{prefix}.conv", layer.conv, previous, shape)
            previous = neuron(f"{prefix}.neuron", layer.neuron, [current], shape)
        elif kind == "block":
            hidden, hidden_shape = conv(f"{prefix}.conv1", layer.conv1, previous, shape)
            spikes = neuron(f"{prefix}.neuron1", layer.neuron1, [hidden], hidden_shape)
            current, out_shape = conv(f"{prefix}.conv2", layer.conv2, spikes, hidden_shape)
            if layer.shortcut is not None:
                skip, _ = conv(f"{prefix}.shortcut", layer.shortcut, previous, shape)
            else:
                # the shortcut carries the block's input spikes: their amplitude, or the constant
                # scale that binary-spike conversion gave it
                source = sources[f"{prefix}.conv1"]
                factor = (float(layer.shortcut_scale) if layer.shortcut_scale is not None
                          else amplitudes[source] if source else 1.0)
                skip = f"{prefix}.skip"
                nodes[skip] = nir.Scale(scale=np.full(shape, factor, dtype=np.float32))
                edges.append((previous, skip))
            previous, shape = neuron(f"{prefix}.neuron2", layer.neuron2, [current, skip], out_shape), out_shape
        elif kind == "pool":
            name = f"{prefix}.pool"
            k, s, p = entry["kernel"], entry["stride"], entry["padding"]
            nodes[name] = nir.AvgPool2d(kernel_size=np.array([k, k]), stride=np.array([s, s]),
                                        padding=np.array([p, p]))
            edges.append((previous, name))
            previous = name
            side = (shape[1] + 2 * p - k) // s + 1
            shape = (shape[0], side, side)
        elif kind == "global_pool":
            name = f"{prefix}.pool"
            nodes[name] = nir.AvgPool2d(kernel_size=np.array(shape[1:]), stride=np.array(shape[1:]),
                                        padding=np.array([0, 0]))
            nodes[f"{prefix}.flatten"] = nir.Flatten(input_type={"input": np.array([shape[0], 1, 1])}, start_dim=0)
            edges += [(previous, name), (name, f"{prefix}.flatten")]
            previous, shape = f"{prefix}.flatten", (shape[0],)
        elif kind == "flatten":
            name = f"{prefix}.flatten"
            nodes[name] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0)
            edges.append((previous, name))
            previous, shape = name, (int(np.prod(shape)),)
        elif kind in ("fc", "output"):
            name = f"{prefix}.fc"
            nodes[name] = nir.Affine(weight=weighted(name, layer.fc.weight), bias=_array(layer.fc.bias))
            edges.append((previous, name))
            previous, shape = name, (entry["out"],)
            if kind == "fc":
                previous = neuron(f"{prefix}.neuron", layer.neuron, [name], shape)
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    edges.append((previous, "output"))
    metadata = {"producer": "stp", "timesteps": snn.timesteps, "dt": 1.0,
                "encoding": "direct: the analog image is the input at every time step",
                "readout": "logits = output summed over the time steps", "reset": "subtract",
                "initial_membrane_fraction": initial}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)


def export(ckpt: Checkpoint, fmt: str, out: Path) -> Path:
    """Write ``ckpt`` as ``fmt`` to ``out`` (atomically)."""
    if fmt not in FORMATS:
        raise StpError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "nir":
        if ckpt.kind != "snn":
            raise StpError(f"--format nir exports SNN checkpoints; {ckpt.path} is an ANN (use --format onnx)")
        nir = _need("nir", fmt)
        graph = nir_graph(model_from_checkpoint(ckpt))
        buffer = io.BytesIO()  # h5py writes into memory: on a full disk it would crash the process
        nir.write(buffer, graph)
        atomic_write_bytes(out, buffer.getvalue())
        return out
    if ckpt.kind != "ann":
        raise StpError(f"--format onnx exports ANN checkpoints; {ckpt.path} is an SNN (use --format nir)")
    _need("onnx", fmt)
    model = model_from_checkpoint(ckpt).eval()
    size = ckpt.record["input"]["image_size"]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: no onnxscript needed
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buffer,  # type: ignore[arg-type]  # a file object works
                          input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          dynamo=False)
    atomic_write_bytes(out, with_metadata(buffer.getvalue(), ckpt))
    return out


def with_metadata(model_bytes: bytes, ckpt: Checkpoint) -> bytes:
    """An ONNX model that says what its input and output mean (metadata_props, read by
    onnxruntime's ``get_modelmeta().custom_metadata_map``): class names in output order, the
    image size, and the normalisation a caller must apply."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    record = ckpt.record
    properties = {
        "stp.classes": json.dumps(record["classes"]),
        "stp.image_size": str(record["input"]["image_size"]),
        "stp.mean": json.dumps(record["input"]["mean"]),
        "stp.std": json.dumps(record["input"]["std"]),
        "stp.input": "float32 NCHW RGB image scaled to [0, 1], then (x - mean) / std per channel",
        "stp.output": "logits, one per class of stp.classes",
        "stp.kind": record["kind"],
        "stp.checkpoint_sha256": ckpt.sha256 or "",
    }
    if record.get("timesteps"):
        properties["stp.timesteps"] = str(record["timesteps"])
    onnx.helper.set_model_props(model, properties)
    model.producer_name, model.producer_version = "stp", __version__
    return model.SerializeToString()
