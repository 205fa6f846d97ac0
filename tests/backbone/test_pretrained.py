"""cs3darknet checkpoints load into cspwrc offline (pretrained_cfg_overlay=dict(file=...)) with identical outputs."""

import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import cspwrc  # noqa: F401
from cspwrc.backbone import checkpoint_filter_fn, cspwrcnet
from cspwrc.errors import CheckpointError
from randomize import randomize_norm_and_wrc_

X = torch.randn(2, 3, 64, 64)


def _saved_cs3darknet(size: str, tmp_path: Path, fmt: str) -> tuple[torch.nn.Module, Path]:
    """A random cs3darknet with non-trivial BN (timm zero-inits the last branch BN) saved as .pth/.safetensors."""
    ref = randomize_norm_and_wrc_(timm.create_model(f"cs3darknet_{size}"), seed=7).eval()
    path = tmp_path / f"cs3darknet_{size}.{fmt}"
    if fmt == "safetensors":
        save_file(ref.state_dict(), str(path))
    else:
        torch.save({"state_dict": ref.state_dict()}, path)  # a training-script style container
    return ref, path


@pytest.mark.parametrize("size,fmt", [("s", "pth"), ("s", "safetensors"), ("m", "safetensors")])
def test_cs3darknet_weights_give_identical_outputs(size: str, fmt: str, tmp_path: Path) -> None:
    ref, path = _saved_cs3darknet(size, tmp_path, fmt)
    model = timm.create_model(f"cspwrc_{size}", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert all(torch.equal(b.wrc.weight, torch.ones(2)) for s in model.stages for b in s.blocks)
    with torch.no_grad():
        assert (model(X) - ref(X)).abs().max().item() <= 1e-5


def test_features_only_new_head_and_channel_wrc(tmp_path: Path) -> None:
    ref, path = _saved_cs3darknet("s", tmp_path, "safetensors")
    overlay = dict(file=str(path))
    feats = timm.create_model("cspwrc_s", pretrained=True, pretrained_cfg_overlay=overlay, features_only=True,
                              out_indices=(2, 3, 4), wrc_weights="channel").eval()
    with torch.no_grad():
        expected = ref.forward_intermediates(X, indices=[2, 3, 4], intermediates_only=True)
        for got, want in zip(feats(X), expected, strict=True):
            assert (got - want).abs().max().item() <= 1e-5
    # another class count: the classifier is dropped from the checkpoint, the rest loads
    model = timm.create_model("cspwrc_s", pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3).eval()
    torch.testing.assert_close(model.stages[1].conv_exp.conv.weight, ref.stages[1].conv_exp.conv.weight)


def test_filter_keeps_learned_wrc_and_broadcasts_scalar() -> None:
    scalar = timm.create_model("cspwrc_n")
    with torch.no_grad():
        scalar.stages[0].blocks[0].wrc.weight.copy_(torch.tensor([0.3, 1.7]))
    channel = timm.create_model("cspwrc_n", wrc_weights="channel")
    channel.load_state_dict(checkpoint_filter_fn(scalar.state_dict(), channel))
    w = channel.stages[0].blocks[0].wrc.weight
    assert w.shape == (2, 16) and torch.equal(w[:, 5], torch.tensor([0.3, 1.7]))


def test_pth_is_not_unpickled(tmp_path: Path) -> None:
    """A .pth that needs arbitrary unpickling (here: a pickled class reference) is refused, not executed."""
    ref, path = _saved_cs3darknet("s", tmp_path, "pth")
    torch.save({"state_dict": ref.state_dict(), "evil": pickle.Pickler}, path)
    with pytest.raises(RuntimeError, match="weights_only=True blocked"):
        timm.create_model("cspwrc_s", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_timm_pretrained_contract_offline(tmp_path: Path) -> None:
    """What timm's test_model_load_pretrained / test_model_features_pretrained do, with a local file:
    in_chans=1 (first conv adapted), another class count, no classifier, features_only."""
    _, path = _saved_cs3darknet("s", tmp_path, "safetensors")
    overlay = dict(file=str(path))
    gray = timm.create_model("cspwrc_s", pretrained=True, pretrained_cfg_overlay=overlay, in_chans=1, num_classes=5)
    assert gray.stem.conv1.conv.weight.shape[1] == 1 and gray(X[:, :1]).shape == (2, 5)
    timm.create_model("cspwrc_s", pretrained=True, pretrained_cfg_overlay=overlay, in_chans=1, num_classes=0)
    timm.create_model("cspwrc_s", pretrained=True, pretrained_cfg_overlay=overlay, features_only=True)


def test_offline_pretrained_fails_fast_naming_the_fix(monkeypatch) -> None:
    """No cached copy and no network: one clear CheckpointError (exit 2 in the tools), not minutes of hub retries."""
    monkeypatch.setattr(cspwrcnet, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(cspwrcnet, "_hub_reachable", lambda timeout_s=3.0: False)

    def no_download(*args, **kwargs):
        raise AssertionError("the hub was contacted")

    monkeypatch.setattr(cspwrcnet, "build_model_with_cfg", no_download)
    with pytest.raises(CheckpointError, match=r"cspwrc_m.*pretrained_cfg_overlay=dict\(file=.*--weights FILE") as err:
        timm.create_model("cspwrc_m", pretrained=True)
    assert err.value.exit_code == 2
