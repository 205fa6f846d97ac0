"""int8 post-training quantization of an exported model, calibrated on the user's own images (``export --int8``).

ONNX Runtime (:func:`quantize_int8`) and OpenVINO (:func:`quantize_openvino_int8`, NNCF) from the same float ONNX file.

onnxruntime's static quantization (``onnxruntime.quantization.quantize_static``), QDQ format: int8 weights per
output channel, uint8 activations whose ranges are the min/max seen on the calibration images. The network is
quantized, the box decoding is not (:func:`network_nodes`): every op of the backbone and the neck (convolutions,
SiLU's sigmoid and product, the residual and WRC adds, concats, pools, upsampling) and the head's convolutions,
so that onnxruntime fuses each chain into int8 kernels (``QLinearConv``, ``QLinearSigmoid``, ``QLinearMul``, ...)
instead of converting to float between every two convs. What follows the head's convs -- its activations, the box
decoding (anchor points, DFL softmax and expectation, or the softplus of direct regression), the class sigmoid and
NMS / top-k -- stays float: an int8 grid over pixel coordinates (0..640, one step ~2.5 px) and over probabilities
near the score threshold costs accuracy (on SHWD val, the race's ``cspwrc_n`` at 320: everything quantized scored
0.012 mAP@[.5:.95], this split 0.363 against the float 0.364). uint8 activations, not int8: onnxruntime's x86
kernels multiply u8 x s8 (AVX2 ``vpmaddubsw``; VNNI); with s8 activations the same model ran 2.4x slower on an AVX2
CPU (docs/deploy.md §4).

Calibration images come through the data pipeline itself (:class:`cspwrc.data.CocoDetection`, ``train=False``:
letterbox, no augmentation), from the train split of the data YAML, the first ``num`` in file order. A data set that
is missing or has fewer than :data:`MIN_CALIB` images is an :class:`~cspwrc.errors.InputError` (exit 2).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cspwrc.data import CocoDetection
from cspwrc.data.config import load_data_config
from cspwrc.errors import InputError

__all__ = ["DEFAULT_CALIB", "HEAD_SCOPE", "MIN_CALIB", "NETWORK_SCOPES", "calibration_images", "network_nodes",
           "quantize_int8", "quantize_openvino_int8"]

DEFAULT_CALIB = 128  # images; onnxruntime's and Ultralytics' int8 guides use a few hundred at most
MIN_CALIB = 8  # fewer images give activation ranges of a handful of scenes
# ONNX node-name prefixes of the detector's modules (torch.onnx names a node by its module path); the head is
# quantized up to its convs, and nodes outside these (input scaling, decoding, NMS) stay float
NETWORK_SCOPES = ("/backbone/", "/neck/")
HEAD_SCOPE = "/head/"


def calibration_images(data_yaml: str | Path, img: int, num: int = DEFAULT_CALIB) -> np.ndarray:
    """``float32 [N, 3, img, img]`` in ``[0, 1]``: the first ``num`` train images of ``data_yaml``, letterboxed as at
    inference."""
    if num < MIN_CALIB:
        raise InputError(f"--calib {num}: at least {MIN_CALIB} calibration images")
    cfg = load_data_config(data_yaml)
    data = CocoDetection(cfg.train.ann, cfg.train.images, img=img, train=False, progress=False)
    if len(data) < MIN_CALIB:
        raise InputError(f"{data_yaml}: its train split has {len(data)} usable images; int8 calibration needs at "
                         f"least {MIN_CALIB}")
    return np.stack([data[i][0].numpy() for i in range(min(num, len(data)))]).astype(np.float32) / 255.0


class _Reader:
    """onnxruntime's ``CalibrationDataReader`` protocol: one ``{input: [1, 3, S, S]}`` feed per call, then None."""

    def __init__(self, input_name: str, images: np.ndarray) -> None:
        self.feeds = iter([{input_name: x[None]} for x in images])

    def get_next(self) -> dict[str, Any] | None:
        return next(self.feeds, None)


def network_nodes(graph: Any) -> list[str]:
    """Names of the nodes of an exported detector's ONNX ``graph`` that :func:`quantize_int8` quantizes: every node
    of the backbone and the neck, and the head's convolutions (module doc)."""
    return [n.name for n in graph.node
            if n.name.startswith(NETWORK_SCOPES) or (n.name.startswith(HEAD_SCOPE) and n.op_type == "Conv")]


def quantize_int8(fp32: str | Path, out: str | Path, images: np.ndarray, input_name: str = "images") -> Path:
    """Write the int8 (QDQ) version of the ONNX file ``fp32`` to ``out``, calibrated on ``images`` (module doc); the
    metadata of ``fp32`` is kept."""
    import onnx  # noqa: PLC0415  (the optional [export] extra)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="cspwrc_quant_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quiet = logging.getLogger()  # onnxruntime's quantizer logs its hints on the root logger
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            # onnxruntime's recommended first step: shape inference and graph optimisation (constant folding, so
            # that every conv's folded bias is an initializer the quantizer can take)
            quant_pre_process(str(fp32), str(prepared))
            nodes = network_nodes(onnx.load(str(prepared)).graph)
            if not nodes:
                raise InputError(f"{fp32}: no node of a cspwrc detector's backbone, neck or head to quantize")
            quantize_static(str(prepared), str(out), _Reader(input_name, images), quant_format=QuantFormat.QDQ,
                            nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        finally:
            quiet.setLevel(level)
    model, source = onnx.load(str(out)), onnx.load(str(fp32), load_external_data=False)
    del model.metadata_props[:]
    for prop in source.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    model.metadata_props.add(key="quantization", value="int8 QDQ (onnxruntime static, backbone, neck and head convs; "
                             f"per-channel s8 weights, u8 MinMax activations over {len(images)} calibration images)")
    onnx.save(model, str(out))
    return out


# OpenVINO op types NNCF would quantize that stay float: OpenVINO's CPU plugin runs the quantized convolutions with
# their activations fused in int8 by itself, and quantizing these cost accuracy (quantize_openvino_int8's doc)
OPENVINO_FLOAT_OPS = ("MatMul", "Add", "Multiply", "Subtract", "Divide", "Concat", "Interpolate", "MaxPool")


def quantize_openvino_int8(fp32: str | Path, images: np.ndarray) -> Any:
    """The int8 OpenVINO model of the ONNX file ``fp32``: NNCF post-training quantization (``nncf.quantize``, mixed
    preset) calibrated on ``images``: the convolutions' inputs and weights in int8, min/max activation ranges, full
    8-bit weights; the DFL expectation (a MatMul), the decode, the residual and WRC adds, concats, pools and
    upsampling stay float. Save it with :func:`cspwrc.deploy.export.onnx_to_openvino` (``ov_model=``).

    NNCF's defaults cost accuracy here: on SHWD val (100 images, the race's ``cspwrc_n``, 320) its mean-of-batch
    ranges, quantized adds/concats and first-layer 7-bit weights ("overflow fix") lost 0.032 mAP@[.5:.95] where
    onnxruntime's QDQ (then convolutions only) lost nothing; min/max ranges alone lost 0.015, convolutions only
    0.013, all three 0.008 (docs/deploy.md §4). The export's int8 check measures the result on the user's own CPU
    and data."""
    import nncf  # noqa: PLC0415  (the optional [openvino] extra)
    import openvino as ov  # noqa: PLC0415
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet  # noqa: PLC0415

    model = ov.convert_model(str(fp32))
    dataset = nncf.Dataset([x[None] for x in images])
    # validate=False: a type the graph lacks (a head without DFL has no MatMul) is not an error
    float_ops = nncf.IgnoredScope(types=list(OPENVINO_FLOAT_OPS), validate=False)
    advanced = nncf.AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX, overflow_fix=nncf.OverflowFix.DISABLE)
    return nncf.quantize(model, dataset, subset_size=len(images), ignored_scope=float_ops,
                         advanced_parameters=advanced)
