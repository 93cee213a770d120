"""Taking a model out of stp: NIR for SNNs (neuromorphic tools), ONNX for ANNs and SNNs (edge
runtimes). Every file is serialised in memory, then written atomically (``files``).

``export.convolutions`` rewrites an SNN as convolutions and neuron layers only; ``export.nir_graph``
makes NIR graphs from it (or the exact stp-dialect graph); ``export.onnx_model`` the ONNX
models, optionally quantized to int8.
"""

from __future__ import annotations

import io
from pathlib import Path

from stpcli.checkpoint import Checkpoint
from stpcli.defaults import EXPORT_FORMATS as FORMATS
from stpcli.defaults import MIN_INT8_AGREEMENT
from stpcli.errors import StpError
from stpcli.export.nir_graph import GRAPHS, integer_graph, nir_graph
from stpcli.export.onnx_model import (
    CALIBRATION_IMAGES,
    QUANTIZATIONS,
    normalised,
    onnx_bytes,
    onnx_predictions,
    quantize_int8,
)
from stpcli.files import atomic_write_bytes
from stpcli.models.plan import pooling_mode

__all__ = ["FORMATS", "GRAPHS", "QUANTIZATIONS", "check_export_options", "export", "nir_graph"]


def _need(module: str, what: str):
    try:
        return __import__(module)
    except ImportError:
        raise StpError(f"{what} needs the {module} package: pip install 'stpcli[export]'") from None


def check_export_options(kind: str, fmt: str, graph: str, quantize: str | None) -> None:
    """The options' values and what a checkpoint of ``kind`` can be exported as."""
    if fmt not in FORMATS:
        raise StpError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if graph not in GRAPHS:
        raise StpError(f"--nir-graph must be one of {', '.join(GRAPHS)}, got {graph!r}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise StpError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    if fmt == "nir" and kind != "snn":
        raise StpError("--format nir exports SNN checkpoints; this is an ANN (use --format onnx)")
    if quantize is not None and fmt != "onnx":
        raise StpError("--quantize applies to --format onnx")


def export(ckpt: Checkpoint, fmt: str, out: Path, *, graph: str = "portable", quantize: str | None = None,
           run=None, data=None, min_agreement: float = MIN_INT8_AGREEMENT) -> dict:
    """Write ``ckpt`` as ``fmt`` to ``out``; returns what was written (and, for ``quantize``, the
    test-split accuracy of the fp32 and int8 ONNX models and how often they agree, measured with
    onnxruntime: below ``min_agreement`` % nothing is written). ``run`` and ``data`` (a ``Run`` and
    ``DataOptions``) are needed for ``quantize`` only: it reads the checkpoint's recorded images."""
    check_export_options(ckpt.kind, fmt, graph, quantize)
    from stpcli.restore import model_from_checkpoint

    if fmt == "nir":
        if pooling_mode(ckpt.model_spec) == "max":
            raise StpError("NIR has no max pooling (its pooling nodes average or sum) and this network pools by max "
                           "(train-ann --pool max); export it as --format onnx")
        nir = _need("nir", "--format nir")
        buffer = io.BytesIO()  # h5py writes into memory: on a full disk it would crash the process
        if ckpt.record.get("quantized"):
            if graph != "portable":
                raise StpError("a quantized checkpoint's integer network exports as --nir-graph portable "
                               "(its integers, exact in any consumer)")
            nir.write(buffer, integer_graph(ckpt))
        else:
            nir.write(buffer, nir_graph(model_from_checkpoint(ckpt), graph))
        atomic_write_bytes(out, buffer.getvalue())
        return {"format": "nir", "graph": graph, "bytes": out.stat().st_size}
    _need("onnx", "--format onnx")
    model = onnx_bytes(ckpt)
    report: dict = {"format": "onnx", "bytes": len(model)}
    if quantize is not None:
        from stpcli.run import load_checkpoint_data

        if run is None:
            raise ValueError("quantize needs a Run to read the calibration and test images")
        parts = load_checkpoint_data(run, ckpt, data)
        train, _ = parts.part("train")
        test, labels = parts.part("test")
        calibration = normalised(ckpt, train[:CALIBRATION_IMAGES])
        quantized = quantize_int8(model, ckpt, calibration)
        images, truth = normalised(ckpt, test), labels.numpy()
        fp32, int8 = onnx_predictions(model, images), onnx_predictions(quantized, images)
        agreement = 100.0 * float((fp32 == int8).mean()) if len(truth) else 100.0
        report.update(fp32_bytes=len(model), bytes=len(quantized), quantize=quantize,
                      calibration_images=len(calibration), test_images=len(truth),
                      fp32_test_accuracy=100.0 * float((fp32 == truth).mean()) if len(truth) else 0.0,
                      int8_test_accuracy=100.0 * float((int8 == truth).mean()) if len(truth) else 0.0,
                      int8_agreement=agreement)
        if agreement < min_agreement:
            raise StpError(f"the int8 model predicts what the fp32 model does on only {agreement:.1f} % of the "
                           f"{len(truth)} test images (floor {min_agreement:g} %; test accuracy fp32 "
                           f"{report['fp32_test_accuracy']:.2f} %, int8 {report['int8_test_accuracy']:.2f} %); "
                           "nothing was written. Pass --min-int8-agreement 0 to write it anyway")
        model = quantized
    atomic_write_bytes(out, model)
    return report
