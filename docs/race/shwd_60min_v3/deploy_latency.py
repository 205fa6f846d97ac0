"""deploy_latency.py THREADS ROUNDS FILE... -- bs1 latency of exported models (ONNX files on onnxruntime CPU, OpenVINO
IR folders/.xml on OpenVINO CPU), whoever exported them (ours or Ultralytics'), on a random [1, 3, S, S] input, S
read from the model's input shape (an OpenVINO model compiled at the static [1, 3, S, S]);
cspwrc.deploy.timing.latency_ms (median of 30 after 5 warm-up), ROUNDS interleaved rounds; prints the median over
rounds and the spread, JSON to stdout's last line."""
import json
import statistics
import sys
from functools import partial
from pathlib import Path

import numpy as np

from cspwrc.deploy.export import ort_session
from cspwrc.deploy.timing import latency_ms


def runner(path: Path, threads: int):
    if path.suffix == ".onnx":
        s = ort_session(path, threads)
        i = s.get_inputs()[0]
        size = i.shape[-1] if isinstance(i.shape[-1], int) else 640
        x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
        return partial(s.run, None, {i.name: x}), size
    import openvino as ov  # noqa: PLC0415 - only for OpenVINO files
    xml = path / "model.xml" if path.is_dir() else path
    if path.is_dir() and not xml.is_file():
        xml = next(path.glob("*.xml"))
    m = ov.Core().read_model(str(xml))
    size = m.inputs[0].get_partial_shape()[-1].get_length()
    m.reshape([1, 3, size, size])  # static, as cspwrc's runner compiles it (ours have a dynamic batch axis)
    c = ov.Core().compile_model(m, "CPU", {"INFERENCE_NUM_THREADS": threads})
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    return partial(c, x), size


threads, rounds, files = int(sys.argv[1]), int(sys.argv[2]), [Path(a) for a in sys.argv[3:]]
times = {str(f): [] for f in files}
sizes = {}
for _ in range(rounds):
    for f in files:
        fn, sizes[str(f)] = runner(f, threads)
        times[str(f)].append(latency_ms(fn))
out = {k: {"size": sizes[k], "median_ms": statistics.median(v), "min": min(v), "max": max(v)} for k, v in times.items()}
for k, v in out.items():
    print(f"{k:<70} @{v['size']} {v['median_ms']:.1f} ms ({v['min']:.1f}-{v['max']:.1f})")
print(json.dumps({"threads": threads, "rounds": rounds, "models": out}))
