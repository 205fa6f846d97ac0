"""Paired statistics of arms x seeds (the WRC ablation, docs/results.md §5): per arm the mean ± std over seeds, and
per arm and seed the difference to a baseline arm with its 95 % Student-t interval and a verdict.

Runs with the same seed see the same data order and augmentation, so pairing by seed removes what the seeds share
and the interval is about the arm, not about which seeds were drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend needed

__all__ = ["T975", "arm_statistics", "mean_std", "paired_interval", "plot_statistics", "stats_table", "t_quantile_975",
           "verdict"]

# Two-sided 95 % Student-t quantiles t(0.975, df) for df = 1..30 (standard tables); beyond, the Cornish-Fisher
# expansion around the normal quantile is accurate to 1e-3.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t_quantile_975(df: int) -> float:
    """The two-sided 95 % Student-t critical value ``t(0.975, df)``."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; nan for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def paired_interval(arm: dict[int, float], base: dict[int, float]) -> dict[str, float | int]:
    """Paired difference ``arm - base`` over the seeds both have: mean, std, and its 95 % t interval.

    Pairing removes what the seeds share (data order, augmentation, initialisation stream), so the interval is
    about the arm, not about which seeds were drawn. With fewer than two pairs the interval is undefined (nan).
    """
    seeds = sorted(arm.keys() & base.keys())
    diffs = [arm[s] - base[s] for s in seeds]
    if not diffs:
        return {"n": 0, "mean": math.nan, "std": math.nan, "low": math.nan, "high": math.nan}
    mean, std = mean_std(diffs)
    half = t_quantile_975(len(diffs) - 1) * std / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return {"n": len(diffs), "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def verdict(interval: dict[str, float | int]) -> str:
    if int(interval["n"]) < 2 or math.isnan(float(interval["low"])):
        return "too few seeds"
    if float(interval["low"]) > 0:
        return "better"
    if float(interval["high"]) < 0:
        return "worse"
    return "no measurable difference"


def arm_statistics(rows: list[dict[str, object]], baseline: str, key: str = "map") -> list[dict[str, object]]:
    """Per arm: seeds, mean +- std of ``key``, and the paired difference to ``baseline`` with its verdict."""
    by_arm: dict[str, dict[int, float]] = {}
    for r in rows:
        by_arm.setdefault(str(r["variant"]), {})[int(r["seed"])] = float(r[key])
    base = by_arm.get(baseline, {})
    stats = []
    for arm, values in by_arm.items():
        mean, std = mean_std(list(values.values()))
        entry: dict[str, object] = {"arm": arm, "seeds": sorted(values), "mean": mean, "std": std}
        if arm != baseline:
            entry["paired"] = paired_interval(values, base)
            entry["verdict"] = verdict(entry["paired"])
        stats.append(entry)
    return stats


def _fmt(value: float, digits: int = 4) -> str:
    return "–" if math.isnan(value) else f"{value:+.{digits}f}" if value < 0 else f"{value:.{digits}f}"


def stats_table(stats: list[dict[str, object]], baseline: str) -> str:
    lines = [f"| arm | seeds | mAP@[.5:.95] mean ± std | paired Δ vs {baseline} | 95 % interval | verdict |",
             "|---|---|---|---|---|---|"]
    for s in stats:
        p = s.get("paired")
        delta = "(baseline)" if p is None else f"{float(p['mean']):+.4f} (n={p['n']})"
        interval = "" if p is None else f"[{_fmt(float(p['low']))}, {_fmt(float(p['high']))}]"
        lines.append(f"| {s['arm']} | {','.join(map(str, s['seeds']))} | {float(s['mean']):.4f} ± "
                     f"{_fmt(float(s['std']))} | {delta} | {interval} | {s.get('verdict', '')} |")
    return "\n".join(lines)


def plot_statistics(stats: list[dict[str, object]], rows: list[dict[str, object]], baseline: str, path: Path) -> None:
    """Left: every run's mAP per arm (mean marked); right: paired differences to the baseline with 95 % intervals."""
    fig = Figure(figsize=(12, 0.5 * len(stats) + 2))
    ax_runs, ax_diff = fig.subplots(1, 2, sharey=True)
    arms = [str(s["arm"]) for s in stats]
    for i, arm in enumerate(arms):
        values = [float(r["map"]) for r in rows if r["variant"] == arm]
        ax_runs.scatter(values, [i] * len(values), s=14, color="tab:blue", alpha=0.7)
        ax_runs.scatter([float(stats[i]["mean"])], [i], marker="|", s=300, color="black")
        paired = stats[i].get("paired")
        if paired and int(paired["n"]) >= 2:
            mean, low, high = float(paired["mean"]), float(paired["low"]), float(paired["high"])
            ax_diff.errorbar([mean], [i], xerr=[[mean - low], [high - mean]], fmt="o", capsize=4,
                             color="tab:green" if low > 0 else "tab:red" if high < 0 else "tab:gray")
    ax_runs.set_yticks(range(len(arms)), arms, fontsize=8)
    ax_runs.set_xlabel("val mAP@[.5:.95] (one dot per seed, bar = mean)")
    ax_diff.axvline(0.0, color="black", linewidth=0.8)
    ax_diff.set_xlabel(f"paired Δ mAP vs {baseline}, 95 % t interval")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


