"""ONNX of ANNs and SNNs, for edge runtimes (onnxruntime, TensorRT, NPU toolchains).

* ANN: the network as trained (BN in eval mode), logits out.
* SNN at T = 1: a feed-forward network of synapses each followed by one clip (``export.one_step``:
  thresholds and initial membranes moved into the biases), which onnxruntime fuses as it fuses an
  ANN's Conv + ReLU.
* SNN at T > 1: BN is already folded into the convolutions; the T steps are unrolled and every
  neuron is written as its equations (``u = I + leak r``, ``s = u > V``, ``r = u - V s``), the
  membranes explicit tensors. The logits are summed over the steps, as stp computes them.
* Every model carries, in ``metadata_props``, its class names in output order, the input size
  and the normalisation a caller must apply.
* ``quantize="int8"``: onnxruntime's static quantizer (QDQ, per-channel weights), calibrated on
  training images of the checkpoint's split; ``quantized_accuracy`` measures what it costs.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from stpcli import __version__
from stpcli.checkpoint import Checkpoint
from stpcli.data.loader import normalise
from stpcli.errors import StpError
from stpcli.export.integer_onnx import integer_onnx_bytes
from stpcli.export.one_step import one_step_network
from stpcli.restore import input_stats, model_from_checkpoint
from stpcli.spiking.neuron import traceable

QUANTIZATIONS = ("int8",)
CALIBRATION_IMAGES = 256


def onnx_bytes(ckpt: Checkpoint) -> bytes:
    """The checkpoint's model as ONNX (input ``image`` N x C x S x S normalised, output ``logits``);
    a quantized SNN as its integer graph (``export.integer_onnx``)."""
    if ckpt.record.get("quantized"):
        return with_metadata(integer_onnx_bytes(ckpt), ckpt, {"stp.arithmetic": "integer (ConvInteger, int32 "
                                                                "accumulators, int32 thresholds)"})
    model = model_from_checkpoint(ckpt).eval()
    if ckpt.kind == "snn" and ckpt.timesteps == 1:
        model = one_step_network(model)
    size = ckpt.record["input"]["image_size"]
    channels = ckpt.model_spec["in_channels"]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), traceable():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes (T is fixed)
        torch.onnx.export(model, (torch.zeros(1, channels, size, size),), buffer,  # type: ignore[arg-type]
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
                          opset_version=17)
    return with_metadata(buffer.getvalue(), ckpt)


def with_metadata(model_bytes: bytes, ckpt: Checkpoint, extra: dict[str, str] | None = None) -> bytes:
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
        "stp.input": "float32 NCHW image scaled to [0, 1], then (x - mean) / std per channel",
        "stp.output": "logits, one per class of stp.classes",
        "stp.kind": record["kind"],
        "stp.checkpoint_sha256": ckpt.sha256 or "",
        **(extra or {}),
    }
    if record.get("timesteps"):
        properties["stp.timesteps"] = str(record["timesteps"])
    onnx.helper.set_model_props(model, properties)
    model.producer_name, model.producer_version = "stp", __version__
    return model.SerializeToString()


def normalised(ckpt: Checkpoint, images: torch.Tensor) -> np.ndarray:
    """Stored images as the model's input, normalised as the checkpoint records."""
    return normalise(images, input_stats(ckpt.record)).numpy().astype(np.float32)


def quantize_int8(model_bytes: bytes, ckpt: Checkpoint, calibration: np.ndarray) -> bytes:
    """Static int8 quantization (QDQ, per-channel weights, MinMax calibration on ``calibration``)."""
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise StpError("--quantize int8 needs onnxruntime: pip install onnxruntime") from None

    class Images(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="stp-quantize-") as folder:
        source, prepared, target = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(model_bytes)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
        return with_metadata(target.read_bytes(), ckpt, {"stp.quantization": "int8 static (QDQ, per-channel weights), "
                                                         f"calibrated on {len(calibration)} training images"})


def onnx_predictions(model_bytes: bytes, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The class an ONNX model run by onnxruntime on the CPU predicts for each image."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    predicted = [session.run(None, {"image": images[start:start + batch]})[0] for start in range(0, len(images), batch)]
    return np.concatenate([p.reshape(len(p), -1).argmax(1) for p in predicted]) if predicted else np.zeros(0, int)


def onnx_accuracy(model_bytes: bytes, images: np.ndarray, labels: np.ndarray, batch: int = 64) -> float:
    """Top-1 accuracy (%) of an ONNX model run by onnxruntime on the CPU."""
    return 100.0 * float((onnx_predictions(model_bytes, images, batch) == labels).sum()) / max(1, len(images))
