"""lat_table.py DIR... -- median over the race_latency_r*.json rounds of every contestant in the given race folders:
bs1 ms at 320 and 640 in PyTorch and ONNX Runtime ("with_nms": with the post-processing), and the rounds' spread."""
import json
import statistics
import sys
from pathlib import Path

print("| run | contestant | rounds | PyTorch @320 | PyTorch @640 | ORT @320 | ORT @640 |")
print("|---|---|---|---|---|---|---|")
for d in map(Path, sys.argv[1:]):
    rounds = [json.loads(f.read_text()) for f in sorted(d.glob("race_latency_r*.json"))]
    for c in [r["contestant"] for r in rounds[0]]:
        rows = [next(r for r in rnd if r["contestant"] == c) for rnd in rounds]
        cells = []
        for key in ("latency_ms", "latency_ort_ms"):
            for s in ("320", "640"):
                v = [r[key][s]["with_nms"] for r in rows if r.get(key)]
                cells.append(f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" if v else "–")
        print(f"| {d.name} | {c} | {len(rows)} | " + " | ".join(cells) + " |")
