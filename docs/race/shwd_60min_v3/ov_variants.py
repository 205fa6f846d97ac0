"""ov_variants.py FP32_ONNX OUT IMG [net|nethc...] -- OpenVINO int8 (NNCF) variants of one exported fp32 file beside
`cspwrc export --format openvino --int8` (convolutions only): every node of backbone, neck and head quantized
(``net``), or the same without the head's activations (``nethc``); min/max ranges and no overflow fix as the export,
calibrated on the first 128 SHWD train images (session 8, issue 26). Score with `cspwrc val`, time with
deploy_latency.py."""
import sys
from pathlib import Path

import nncf
import openvino as ov
from nncf.quantization.range_estimator import RangeEstimatorParametersSet

from cspwrc.deploy.export import onnx_to_openvino
from cspwrc.deploy.quantize import HEAD_SCOPE, NETWORK_SCOPES, calibration_images

SCOPES = (*NETWORK_SCOPES, HEAD_SCOPE)


def main() -> None:
    fp32, out, img = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    images = calibration_images("configs/data/shwd.yaml", img, 128)
    advanced = nncf.AdvancedQuantizationParameters(
        activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX, overflow_fix=nncf.OverflowFix.DISABLE)
    ops = [o for o in ov.convert_model(str(fp32)).get_ordered_ops()
           if o.get_type_name() not in ("Constant", "Parameter", "Result")]
    outside = [o.get_friendly_name() for o in ops if not o.get_friendly_name().startswith(SCOPES)]
    head_act = [o.get_friendly_name() for o in ops if o.get_friendly_name().startswith(HEAD_SCOPE)
                and o.get_type_name() not in ("Convolution", "GroupConvolution", "Add")]
    scopes = {"net": nncf.IgnoredScope(names=outside, validate=False),
              "nethc": nncf.IgnoredScope(names=outside + head_act, validate=False)}
    for name in sys.argv[4:]:
        model = nncf.quantize(ov.convert_model(str(fp32)), nncf.Dataset([x[None] for x in images]),
                              subset_size=len(images), ignored_scope=scopes[name], advanced_parameters=advanced)
        onnx_to_openvino(fp32, out / f"ov_{name}", ov_model=model)
        print("wrote", out / f"ov_{name}", flush=True)


if __name__ == "__main__":
    main()
