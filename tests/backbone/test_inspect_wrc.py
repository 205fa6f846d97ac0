"""WRC inspection: rows, table, plot, checkpoint key mapping and the tools/wrc_weights.py CLI."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import FeatureListNet

import cspwrc  # noqa: F401
from cspwrc.backbone import P3_P5, backbone_state_dict, format_wrc_table, plot_wrc_weights, wrc_weights
from cspwrc.cli import wrc_weights as wrc_weights_cli

ROOT = Path(__file__).resolve().parents[2]


def _trained_like(**kwargs) -> torch.nn.Module:
    model = timm.create_model("cspwrc_n", **kwargs)
    with torch.no_grad():
        for i, p in enumerate(p for n, p in model.named_parameters() if n.endswith("wrc.weight")):
            # squared: the per-channel (a, b) pairs differ after normalisation (a linear ramp would make every
            # channel's softmax equal, and min == mean == max only up to float32 rounding)
            p.copy_(torch.linspace(0.2, 1.8, p.numel()).square().reshape(p.shape) + 0.1 * i)
    return model


def test_rows_are_effective_weights() -> None:
    model = _trained_like(wrc_weights="channel", wrc_normalize="softmax")
    rows = wrc_weights(model)
    assert [r.block for r in rows] == [n.removesuffix(".wrc.weight") for n in sorted(model.no_weight_decay())]
    a, b = torch.softmax(model.stages[2].blocks[1].wrc.weight, dim=0)
    row = rows[4]  # blocks per stage: 1, 2, 3, 1
    assert row.block == "stages.2.blocks.1"
    assert row.a_mean == pytest.approx(a.mean().item()) and row.b_max == pytest.approx(b.max().item())
    assert row.a_min == pytest.approx(a.min().item()) and row.a_max == pytest.approx(a.max().item())
    assert row.a_min < row.a_mean - 1e-3 and row.a_mean + 1e-3 < row.a_max  # channels differ, by far more than an ulp


def test_table_and_plot(tmp_path: Path) -> None:
    rows = wrc_weights(_trained_like())
    table = format_wrc_table(rows)
    assert "stages.3.blocks.0" in table and f"({len(rows)} blocks" in table
    png = plot_wrc_weights(rows, tmp_path / "wrc.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backbone_state_dict_from_detector_keys() -> None:
    feats = timm.create_model("cspwrc_n", features_only=True, out_indices=P3_P5)
    detector_like = {f"backbone.{k}": v for k, v in feats.state_dict().items()}
    detector_like["head.cls.weight"] = torch.zeros(1)
    model = timm.create_model("cspwrc_n", num_classes=0)
    mapped = backbone_state_dict(detector_like, like=model.state_dict())
    missing, unexpected = model.load_state_dict(mapped, strict=True)  # strict: a mismatch raises
    assert not missing and not unexpected and mapped.keys() == model.state_dict().keys()
    assert backbone_state_dict(model.state_dict()).keys() == model.state_dict().keys()


def _cli(*args: str) -> str:
    """Run ``cspwrc wrc-weights`` in-process (a subprocess would spend seconds importing torch)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert wrc_weights_cli.main(list(args)) == 0
    return out.getvalue()


def test_cli_on_detector_checkpoint(tmp_path: Path) -> None:
    """Model name and WRC options come from the checkpoint's cspwrc metadata; learned values are printed."""
    model = _trained_like(wrc_weights="channel", wrc_normalize="relu")
    feats = FeatureListNet(model, out_indices=P3_P5, flatten_sequential=True)  # as the detector holds it
    meta = dict(model=dict(backbone=dict(name="cspwrc_n", kwargs=dict(wrc_weights="channel", wrc_normalize="relu"))),
                num_classes=2)
    path = tmp_path / "best.safetensors"
    save_file({f"backbone.{k}": v.contiguous() for k, v in feats.state_dict().items()}, str(path),
              metadata={"cspwrc": json.dumps(meta)})
    out = _cli("--weights", str(path), "--plot", str(tmp_path / "p.png"))
    expected = format_wrc_table(wrc_weights(model))
    assert expected in out and (tmp_path / "p.png").is_file()


def test_cli_on_plain_backbone_pth(tmp_path: Path) -> None:
    model = _trained_like()
    path = tmp_path / "backbone.pth"
    torch.save(model.state_dict(), path)
    assert format_wrc_table(wrc_weights(model)) in _cli("--model", "cspwrc_n", "--weights", str(path))
