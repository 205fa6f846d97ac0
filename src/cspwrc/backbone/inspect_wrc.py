"""What did the weighted residual connections learn? Per-block effective ``(a, b)``: table and plot."""

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from cspwrc.layers import WeightedResidual
from cspwrc.weights import rename_like

__all__ = ["WrcRow", "backbone_state_dict", "format_wrc_table", "plot_wrc_weights", "wrc_weights"]


@dataclass
class WrcRow:
    """Effective (normalised) weights of one block's ``H = a * F(x) + b * x``; min/max differ for ``"channel"``."""

    block: str
    weights: str
    normalize: str
    a_mean: float
    a_min: float
    a_max: float
    b_mean: float
    b_min: float
    b_max: float


@torch.no_grad()
def wrc_weights(model: nn.Module) -> list[WrcRow]:
    """One row per :class:`WeightedResidual` in ``model`` (any model: backbone, features_only, detector), in
    module order. Blocks with ``weights="none"`` report ``a = b = 1``; a folded model has no rows."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, WeightedResidual):
            a, b = (t.float() for t in module.channel_weights())
            rows.append(WrcRow(
                block=name.removesuffix(".wrc"), weights=module.weights, normalize=module.normalize,
                a_mean=a.mean().item(), a_min=a.min().item(), a_max=a.max().item(),
                b_mean=b.mean().item(), b_min=b.min().item(), b_max=b.max().item(),
            ))
    return rows


def format_wrc_table(rows: Sequence[WrcRow]) -> str:
    """Fixed-width text table (block, a mean [min, max], b mean [min, max], b/a)."""
    if not rows:
        return "no weighted residual connections (a folded model, or none in this architecture)"
    width = max(len("block"), *(len(r.block) for r in rows))
    lines = [f"{'block':<{width}}  {'a':>7} {'a min':>7} {'a max':>7}  {'b':>7} {'b min':>7} {'b max':>7}  {'b/a':>7}"]
    for r in rows:
        ratio = f"{r.b_mean / r.a_mean:7.3f}" if r.a_mean != 0 else f"{'inf':>7}"
        lines.append(
            f"{r.block:<{width}}  {r.a_mean:7.3f} {r.a_min:7.3f} {r.a_max:7.3f}  "
            f"{r.b_mean:7.3f} {r.b_min:7.3f} {r.b_max:7.3f}  {ratio}"
        )
    lines.append(f"({len(rows)} blocks, weights={rows[0].weights!r}, normalize={rows[0].normalize!r})")
    return "\n".join(lines)


def plot_wrc_weights(model_or_rows: nn.Module | Sequence[WrcRow], path: str | Path,
                     title: str | None = None) -> Path:
    """Save a PNG of ``a`` (branch) and ``b`` (shortcut) per block, bars spanning the per-channel min..max."""
    # Imported here, not at module level, because matplotlib costs ~1 s and this module is part of `import cspwrc`;
    # matplotlib.figure, no pyplot: no global state, no GUI backend needed.
    from matplotlib.figure import Figure  # noqa: PLC0415  (lazy: ~1 s, and this module is in `import cspwrc`)

    rows = wrc_weights(model_or_rows) if isinstance(model_or_rows, nn.Module) else list(model_or_rows)
    if not rows:
        raise ValueError("nothing to plot: no weighted residual connections")
    fig = Figure(figsize=(max(6.0, 0.35 * len(rows) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    xs = list(range(len(rows)))
    for key, label, offset in (("a", "a (branch F(x))", -0.1), ("b", "b (shortcut x)", 0.1)):
        mean = [getattr(r, f"{key}_mean") for r in rows]
        # clamp: the float mean of equal values can be an ulp outside their min/max
        low = [max(0.0, m - getattr(r, f"{key}_min")) for m, r in zip(mean, rows, strict=True)]
        high = [max(0.0, getattr(r, f"{key}_max") - m) for m, r in zip(mean, rows, strict=True)]
        ax.errorbar([x + offset for x in xs], mean, yerr=[low, high], fmt="o", capsize=3, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(xs, [r.block for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("effective weight")
    ax.set_title(title or f"learned WRC weights (weights={rows[0].weights}, normalize={rows[0].normalize})")
    ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


_STEM_KEY = re.compile(r"^(.*?)stem[._]conv1\.conv\.weight$")


def backbone_state_dict(
    state_dict: dict[str, torch.Tensor], prefix: str | None = None, like: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """The backbone part of a checkpoint, keys spelled as in ``like`` (the target model's state dict keys).

    Accepts a plain backbone state dict, a ``features_only`` one, or a detector's (backbone under a prefix such
    as ``backbone.``). ``prefix=None`` finds it from the stem conv's key. Flattened ``features_only`` names
    (``stages_0.``) are matched to ``like``'s (``stages.0.``) by :func:`cspwrc.weights.rename_like`.
    """
    if prefix is None:
        found = [m.group(1) for m in map(_STEM_KEY.match, state_dict) if m]
        if len(set(found)) != 1:
            raise ValueError(f"cannot find one backbone in the checkpoint (stem conv prefixes found: {found})")
        prefix = found[0]
    return rename_like(like or (), {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
