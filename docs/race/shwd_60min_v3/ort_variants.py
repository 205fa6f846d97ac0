"""ort_variants.py FP32_ONNX OUT IMG [VARIANT...] -- onnxruntime int8 (QDQ) variants of one exported fp32 file,
calibrated on the first 128 SHWD train images (session 8, issue 26: which setup does onnxruntime run faster than
fp32 on an AVX2 CPU without VNNI, at what mAP). Score each with `cspwrc val`, time with deploy_latency.py.

Variants: s8_conv (session 7's product: int8 activations, convs only), u8_conv (uint8 activations), u8_all and
u8_all_rr (every op, reduce_range: 7-bit weights), u8_net (every node of backbone, neck and head), u8_bbneck
(backbone and neck whole, the head's convs: what `cspwrc export --int8` now does)."""
import logging
import sys
import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from cspwrc.deploy.quantize import HEAD_SCOPE, NETWORK_SCOPES, _Reader, calibration_images, network_nodes


def variants(graph: onnx.GraphProto) -> dict[str, dict]:
    u8 = QuantType.QUInt8
    net = [n.name for n in graph.node if n.name.startswith((*NETWORK_SCOPES, HEAD_SCOPE))]
    return {"s8_conv": {"op_types_to_quantize": ["Conv"], "activation_type": QuantType.QInt8},
            "u8_conv": {"op_types_to_quantize": ["Conv"], "activation_type": u8},
            "u8_all": {"activation_type": u8},
            "u8_all_rr": {"activation_type": u8, "reduce_range": True},
            "u8_net": {"activation_type": u8, "nodes_to_quantize": net},
            "u8_bbneck": {"activation_type": u8, "nodes_to_quantize": network_nodes(graph)}}


def main() -> None:
    fp32, out, img = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    images = calibration_images("configs/data/shwd.yaml", img, 128)
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "p.onnx"
        quant_pre_process(str(fp32), str(prepared))
        table = variants(onnx.load(str(prepared)).graph)
        for name in sys.argv[4:] or table:
            dst = out / f"{name}.onnx"
            quantize_static(str(prepared), str(dst), _Reader("images", images), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                            **table[name])
            model, source = onnx.load(str(dst)), onnx.load(str(fp32))
            del model.metadata_props[:]
            for prop in source.metadata_props:
                model.metadata_props.add(key=prop.key, value=prop.value)
            model.metadata_props.add(key="quantization", value=name)
            onnx.save(model, str(dst))
            print("wrote", dst, flush=True)


if __name__ == "__main__":
    main()
