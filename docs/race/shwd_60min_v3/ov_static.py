"""ov_static.py THREADS ROUNDS IR_FOLDER... -- OpenVINO CPU latency (bs1, random input) of each IR compiled as read
(ours: a dynamic batch axis) and reshaped to the static [1, 3, S, S] (what cspwrc's runner now compiles), in
interleaved rounds; median and spread (session 8, issue 26)."""
import statistics
import sys
from pathlib import Path

import numpy as np
import openvino as ov

from cspwrc.deploy.timing import latency_ms


def runner(core: ov.Core, folder: str, static: bool, threads: int):
    model = core.read_model(str(next(Path(folder).glob("*.xml"))))
    size = model.inputs[0].get_partial_shape()[-1].get_length()
    if static:
        model.reshape([1, 3, size, size])
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    return lambda: compiled(x)


def main() -> None:
    threads, rounds, core = int(sys.argv[1]), int(sys.argv[2]), ov.Core()
    cases = [(folder, static) for folder in sys.argv[3:] for static in (False, True)]
    times = {case: [] for case in cases}
    for _ in range(rounds):
        for case in cases:
            times[case].append(latency_ms(runner(core, *case, threads)))
    for (folder, static), t in times.items():
        kind = "static " if static else "as read"
        print(f"{folder:<60} {kind} {statistics.median(t):6.1f} ms ({min(t):.1f}-{max(t):.1f})")


if __name__ == "__main__":
    main()
