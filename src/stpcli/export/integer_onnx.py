"""A quantized one-time-step SNN as an integer ONNX graph: what ``integer_runtime`` specifies, in
operators an edge runtime executes with integer arithmetic (onnxruntime runs them on the CPU).

The input is the stored 8-bit image as float32 (``image``, N x C x S x S, values 0..255), cast to
uint8 once; every synapse is a ``ConvInteger`` or ``MatMulInteger`` with int8 weights and int32
accumulators; every neuron layer a ``Greater`` against its int32 thresholds, cast back to uint8 for
the next layer; sum pooling a depthwise ``ConvInteger`` with a kernel of ones (a global one a
``ReduceSum`` in int32), max pooling a ``MaxPool`` on the uint8 spikes; the output layer's
integer sums, exact in float64, give ``delta A + b``, returned as float32 (``logits``).
"""

from __future__ import annotations

import numpy as np

from stpcli.checkpoint import Checkpoint
from stpcli.errors import StpError
from stpcli.models.plan import build_plan

OPSET = 17


def integer_onnx_bytes(ckpt: Checkpoint) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    if ckpt.record["input"].get("decoding", "rgb8") != "rgb8":
        raise StpError("the integer ONNX graph reads 8-bit images (ConvInteger takes 8-bit inputs); "
                       "this checkpoint's images hold other bands or types")
    tensors = {name: tensor.numpy() for name, tensor in ckpt.tensors.items()}
    nodes, initializers = [], []
    counter = [0]

    def constant(array: np.ndarray, hint: str) -> str:
        counter[0] += 1
        name = f"{hint}_{counter[0]}"
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], hint: str, **attributes) -> str:
        counter[0] += 1
        output = f"{hint}_{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def fire(accumulator: str, threshold: np.ndarray, hint: str, maps: bool = True) -> str:
        shape = (1, -1, 1, 1) if maps else (1, -1)
        above = node("Greater", [accumulator, constant(threshold.astype(np.int32).reshape(shape), f"{hint}_theta")],
                     f"{hint}_fires")
        return node("Cast", [above], f"{hint}_spikes", to=TensorProto.UINT8)

    def conv(x: str, weight: np.ndarray, stride: int, padding: int, hint: str, group: int = 1) -> str:
        k = weight.shape[-1]
        return node("ConvInteger", [x, constant(weight, f"{hint}_w")], f"{hint}_acc", strides=[stride, stride],
                    pads=[padding] * 4, kernel_shape=[k, k], group=group)

    size = ckpt.record["input"]["image_size"]
    bands = len(ckpt.record["input"]["mean"])
    x = node("Cast", ["image"], "pixels", to=TensorProto.UINT8)
    channels = bands
    for index, entry in enumerate(build_plan(ckpt.model_spec)):
        at, kind = f"layers.{index}", entry["type"]
        if kind == "conv":
            x = fire(conv(x, tensors[f"{at}.conv.weight_int"], entry["stride"], entry["padding"], f"conv{index}"),
                     tensors[f"{at}.neuron.threshold_int"], f"conv{index}")
            channels = entry["out"]
        elif kind == "block":
            hidden = fire(conv(x, tensors[f"{at}.conv1.weight_int"], entry["stride"], 1, f"block{index}a"),
                          tensors[f"{at}.neuron1.threshold_int"], f"block{index}a")
            accumulator = conv(hidden, tensors[f"{at}.conv2.weight_int"], 1, 1, f"block{index}b")
            if f"{at}.shortcut.weight_int" in tensors:
                skip = conv(x, tensors[f"{at}.shortcut.weight_int"], entry["stride"], 0, f"block{index}s")
            else:
                wide = node("Cast", [x], f"block{index}x", to=TensorProto.INT32)
                kappa = tensors[f"{at}.shortcut_int"].astype(np.int32).reshape(1, -1, 1, 1)
                skip = node("Mul", [wide, constant(kappa, f"block{index}_kappa")], f"block{index}s")
            total = node("Add", [accumulator, skip], f"block{index}sum")
            x = fire(total, tensors[f"{at}.neuron2.threshold_int"], f"block{index}b")
            channels = entry["out"]
        elif kind == "pool" and entry["mode"] == "max":  # spikes stay uint8 0/1
            k = entry["kernel"]
            x = node("MaxPool", [x], f"pool{index}", kernel_shape=[k, k], strides=[entry["stride"]] * 2,
                     pads=[entry["padding"]] * 4)
        elif kind == "pool":
            k = entry["kernel"]
            ones = np.ones((channels, 1, k, k), dtype=np.uint8)
            counts = conv(x, ones, entry["stride"], entry["padding"], f"pool{index}", group=channels)
            x = node("Cast", [counts], f"pool{index}_counts", to=TensorProto.UINT8)  # at most k^2
        elif kind == "global_pool":  # counts may pass 255: they stay int32, and the output layer reads them as such
            wide = node("Cast", [x], f"gpool{index}x", to=TensorProto.INT32)
            x = node("ReduceSum", [wide, constant(np.array([2, 3], dtype=np.int64), "axes")], f"gpool{index}",
                     keepdims=0)
        elif kind == "flatten":
            x = node("Flatten", [x], f"flatten{index}", axis=1)
        elif kind == "fc":
            weight = np.ascontiguousarray(tensors[f"{at}.fc.weight_int"].T)
            accumulator = node("MatMulInteger", [x, constant(weight, f"fc{index}_w")], f"fc{index}_acc")
            x = fire(accumulator, tensors[f"{at}.neuron.threshold_int"], f"fc{index}", maps=False)
        elif kind == "output":  # in float64: integer sums of integers, exact, whatever the input counts
            weight = np.ascontiguousarray(tensors[f"{at}.fc.weight_int"].T.astype(np.float64))
            wide = node("Cast", [x], "out_in", to=TensorProto.DOUBLE)
            accumulator = node("MatMul", [wide, constant(weight, "out_w")], "out_acc")
            scaled = node("Mul", [accumulator, constant(tensors[f"{at}.fc.weight_step"].astype(np.float64), "out_step")],
                          "out_scaled")
            logits = node("Add", [scaled, constant(tensors[f"{at}.fc.bias"].astype(np.float64), "out_bias")], "out")
            nodes.append(helper.make_node("Cast", [logits], ["logits"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes, "stp_integer_snn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", bands, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", ckpt.model_spec["num_classes"]])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="stp")
    return model.SerializeToString()
