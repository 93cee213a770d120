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
from stpcli.models.plan import PlanEntry, build_plan
from stpcli.schema import recorded_input

OPSET = 17


class _IntegerGraph:
    """The graph being built: its nodes and constants, the quantized tensors, the name of the value
    reaching the next layer (``x``) and its channel count."""

    def __init__(self, tensors: dict[str, np.ndarray], bands: int):
        from onnx import TensorProto

        self.tensors, self.count, self.channels = tensors, 0, bands
        self.nodes: list = []
        self.initializers: list = []
        self.x = self.node("Cast", ["image"], "pixels", to=TensorProto.UINT8)

    def constant(self, array: np.ndarray, hint: str) -> str:
        from onnx import numpy_helper

        self.count += 1
        name = f"{hint}_{self.count}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, **attributes) -> str:
        from onnx import helper

        self.count += 1
        output = f"{hint}_{self.count}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        return output

    def fire(self, accumulator: str, threshold: str, hint: str, maps: bool = True) -> str:
        """uint8 spikes: the int32 ``accumulator`` above the thresholds ``self.tensors[threshold]``."""
        from onnx import TensorProto

        theta = self.tensors[threshold].astype(np.int32).reshape((1, -1, 1, 1) if maps else (1, -1))
        above = self.node("Greater", [accumulator, self.constant(theta, f"{hint}_theta")], f"{hint}_fires")
        return self.node("Cast", [above], f"{hint}_spikes", to=TensorProto.UINT8)

    def conv(self, x: str, weight: np.ndarray, stride: int, padding: int, hint: str, group: int = 1) -> str:
        k = weight.shape[-1]
        return self.node("ConvInteger", [x, self.constant(weight, f"{hint}_w")], f"{hint}_acc",
                         strides=[stride, stride], pads=[padding] * 4, kernel_shape=[k, k], group=group)


def _conv_layer(graph: _IntegerGraph, at: str, index: int, entry: PlanEntry) -> None:
    accumulator = graph.conv(graph.x, graph.tensors[f"{at}.conv.weight_int"], entry["stride"], entry["padding"],
                             f"conv{index}")
    graph.x, graph.channels = graph.fire(accumulator, f"{at}.neuron.threshold_int", f"conv{index}"), entry["out"]


def _block(graph: _IntegerGraph, at: str, index: int, entry: PlanEntry) -> None:
    from onnx import TensorProto

    x, tensors = graph.x, graph.tensors
    hidden = graph.fire(graph.conv(x, tensors[f"{at}.conv1.weight_int"], entry["stride"], 1, f"block{index}a"),
                        f"{at}.neuron1.threshold_int", f"block{index}a")
    accumulator = graph.conv(hidden, tensors[f"{at}.conv2.weight_int"], 1, 1, f"block{index}b")
    if f"{at}.shortcut.weight_int" in tensors:
        skip = graph.conv(x, tensors[f"{at}.shortcut.weight_int"], entry["stride"], 0, f"block{index}s")
    else:
        wide = graph.node("Cast", [x], f"block{index}x", to=TensorProto.INT32)
        kappa = tensors[f"{at}.shortcut_int"].astype(np.int32).reshape(1, -1, 1, 1)
        skip = graph.node("Mul", [wide, graph.constant(kappa, f"block{index}_kappa")], f"block{index}s")
    total = graph.node("Add", [accumulator, skip], f"block{index}sum")
    graph.x, graph.channels = graph.fire(total, f"{at}.neuron2.threshold_int", f"block{index}b"), entry["out"]


def _pool_layer(graph: _IntegerGraph, at: str, index: int, entry: PlanEntry) -> None:
    """Max pooling on the uint8 spikes (they stay 0/1); sum pooling a depthwise ConvInteger of ones."""
    from onnx import TensorProto

    k, stride, padding = entry["kernel"], entry["stride"], entry["padding"]
    if entry["mode"] == "max":
        graph.x = graph.node("MaxPool", [graph.x], f"pool{index}", kernel_shape=[k, k], strides=[stride] * 2,
                             pads=[padding] * 4)
        return
    ones = np.ones((graph.channels, 1, k, k), dtype=np.uint8)
    counts = graph.conv(graph.x, ones, stride, padding, f"pool{index}", group=graph.channels)
    graph.x = graph.node("Cast", [counts], f"pool{index}_counts", to=TensorProto.UINT8)  # at most k^2


def _global_pool(graph: _IntegerGraph, at: str, index: int, entry: PlanEntry) -> None:
    """Counts may pass 255: they stay int32, and the output layer reads them as such."""
    from onnx import TensorProto

    wide = graph.node("Cast", [graph.x], f"gpool{index}x", to=TensorProto.INT32)
    graph.x = graph.node("ReduceSum", [wide, graph.constant(np.array([2, 3], dtype=np.int64), "axes")],
                         f"gpool{index}", keepdims=0)


def _flatten(graph: _IntegerGraph, at: str, index: int, entry: PlanEntry) -> None:
    graph.x = graph.node("Flatten", [graph.x], f"flatten{index}", axis=1)


def _fc(graph: _IntegerGraph, at: str, index: int, entry: PlanEntry) -> None:
    weight = np.ascontiguousarray(graph.tensors[f"{at}.fc.weight_int"].T)
    accumulator = graph.node("MatMulInteger", [graph.x, graph.constant(weight, f"fc{index}_w")], f"fc{index}_acc")
    graph.x = graph.fire(accumulator, f"{at}.neuron.threshold_int", f"fc{index}", maps=False)


def _output(graph: _IntegerGraph, at: str, index: int, entry: PlanEntry) -> None:
    """In float64: integer sums of integers, exact, whatever the input counts; returned as float32."""
    from onnx import TensorProto, helper

    tensors = graph.tensors
    weight = np.ascontiguousarray(tensors[f"{at}.fc.weight_int"].T.astype(np.float64))
    wide = graph.node("Cast", [graph.x], "out_in", to=TensorProto.DOUBLE)
    accumulator = graph.node("MatMul", [wide, graph.constant(weight, "out_w")], "out_acc")
    step = graph.constant(tensors[f"{at}.fc.weight_step"].astype(np.float64), "out_step")
    scaled = graph.node("Mul", [accumulator, step], "out_scaled")
    logits = graph.node("Add", [scaled, graph.constant(tensors[f"{at}.fc.bias"].astype(np.float64), "out_bias")], "out")
    graph.nodes.append(helper.make_node("Cast", [logits], ["logits"], to=TensorProto.FLOAT))


# plan entry type -> its operators (models.plan.LAYER_TYPES lists the types; a test checks the cover)
INTEGER_ONNX_LAYERS = {"conv": _conv_layer, "block": _block, "pool": _pool_layer, "global_pool": _global_pool,
                       "flatten": _flatten, "fc": _fc, "output": _output}


def integer_onnx_bytes(ckpt: Checkpoint) -> bytes:
    from onnx import TensorProto, helper

    if recorded_input(ckpt.record)["decoding"] != "rgb8":
        raise StpError("the integer ONNX graph reads 8-bit images (ConvInteger takes 8-bit inputs); "
                       "this checkpoint's images hold other bands or types")
    size = ckpt.record["input"]["image_size"]
    bands = len(ckpt.record["input"]["mean"])
    graph = _IntegerGraph({name: tensor.numpy() for name, tensor in ckpt.tensors.items()}, bands)
    for index, entry in enumerate(build_plan(ckpt.model_spec)):
        INTEGER_ONNX_LAYERS[entry["type"]](graph, f"layers.{index}", index, entry)
    model = helper.make_model(helper.make_graph(
        graph.nodes, "stp_integer_snn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", bands, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", ckpt.model_spec["num_classes"]])],
        graph.initializers), opset_imports=[helper.make_opsetid("", OPSET)], producer_name="stp")
    return model.SerializeToString()
