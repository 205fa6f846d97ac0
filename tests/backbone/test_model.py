"""The cspwrc timm model family: registry, sizes vs cs3darknet, timm model API conventions."""

import copy

import pytest
import timm
import torch
import torch.nn as nn
from timm.models._manipulate import group_parameters
from timm.optim import create_optimizer_v2

import cspwrc  # noqa: F401
from cspwrc.backbone import P3_P5, CspWrcNet
from cspwrc.layers import CspStage, WeightedResidual

SIZES = ["n", "s", "m", "l", "x"]
STAGE_CHS = {"n": 32, "s": 64, "m": 96, "l": 128, "x": 160}  # stage 0 width: 128 * width multiplier


def _meta_model(name: str, **kwargs) -> nn.Module:
    """Structure-only model (no memory, no init cost): enough for names, shapes and feature_info."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def test_registered_by_import() -> None:
    assert timm.list_models("cspwrc*") == [f"cspwrc_{s}" for s in sorted(SIZES)]
    assert isinstance(timm.create_model("cspwrc_n"), CspWrcNet)


@pytest.mark.parametrize("size", ["s", "m", "l", "x"])
def test_same_tensors_as_cs3darknet(size: str) -> None:
    ours = {k: v.shape for k, v in _meta_model(f"cspwrc_{size}").state_dict().items() if "wrc" not in k}
    ref = {k: v.shape for k, v in _meta_model(f"cs3darknet_{size}").state_dict().items()}
    assert ours == ref


@pytest.mark.parametrize("size", SIZES)
def test_feature_info(size: str) -> None:
    base = STAGE_CHS[size]
    model = _meta_model(f"cspwrc_{size}", features_only=True)
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert model.feature_info.channels() == [base // 2, base, base * 2, base * 4, base * 8]
    p3p5 = _meta_model(f"cspwrc_{size}", features_only=True, out_indices=P3_P5)
    assert p3p5.feature_info.reduction() == [8, 16, 32]
    assert p3p5.feature_info.channels() == [base * 2, base * 4, base * 8]


def test_n_is_yolov5n_backbone() -> None:
    """cspwrc_n: YOLOv5n's depths (round, not int: 1, 2, 3, 1), a 16-channel one-conv stem, stride-2 convs that
    widen to the stage (no cs3darknet peer to stay loadable from), PyTorch's default conv init, and bottlenecks
    twice as wide as the stage's half (bottle_ratio 2): 1.45 M parameters."""
    model = _meta_model("cspwrc_n")
    assert [len(s.blocks) for s in model.stages] == [1, 2, 3, 1]
    assert model.cfg.bottle_ratio == 2.0 and sum(p.numel() for p in model.parameters()) == 1_448_038
    assert [m.conv.out_channels for m in model.stem] == [16]
    assert [s.conv_down.conv.out_channels for s in model.stages] == [32, 64, 128, 256]
    assert model.cfg.conv_init == "default" and not model.cfg.zero_init_last


@pytest.mark.parametrize("name", ["cspwrc_n", "cspwrc_s"])
def test_forward_shapes(name: str) -> None:
    model = timm.create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 7)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    outs = timm.create_model(name, features_only=True, out_indices=P3_P5).eval()(x)
    assert [tuple(o.shape[-2:]) for o in outs] == [(8, 8), (4, 4), (2, 2)]


def test_forward_intermediates_and_prune() -> None:
    model = timm.create_model("cspwrc_n").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
        torch.testing.assert_close(final, model.forward_features(x))
        early = model.forward_intermediates(x, indices=[2], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], feats[2])
        pruned = copy.deepcopy(model)
        assert pruned.prune_intermediate_layers(P3_P5[:2]) == [2, 3]
        assert len(pruned.stages) == 3 and pruned.num_classes == 0
        torch.testing.assert_close(pruned.forward_features(x), feats[3])


def test_grad_checkpointing_checkpoints_and_matches() -> None:
    x = torch.randn(2, 3, 64, 64)
    grads, outs = [], []
    for enable in (False, True):
        torch.manual_seed(0)
        model = timm.create_model("cspwrc_n", drop_rate=0.0).train()
        model.set_grad_checkpointing(enable)
        calls = []
        # calls=calls: the hook counts into this round's list, bound when it is made
        model.stages[2].blocks[0].register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        out = model(x)
        out.square().mean().backward()
        assert len(calls) == (2 if enable else 1)  # the block's forward re-ran in backward
        outs.append(out.detach())
        grads.append([p.grad for p in model.parameters()])
    torch.testing.assert_close(outs[1], outs[0])
    for g_plain, g_ckpt in zip(*grads, strict=True):
        torch.testing.assert_close(g_ckpt, g_plain)


def test_no_weight_decay_and_optimizer_groups() -> None:
    model = timm.create_model("cspwrc_n", wrc_weights="channel")
    wrc_names = {n for n, p in model.named_parameters() if n.endswith("wrc.weight")}
    assert len(wrc_names) == 7 and model.no_weight_decay() == wrc_names
    opt = create_optimizer_v2(model, "sgd", lr=0.1, weight_decay=0.05)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(p) in no_decay for n, p in model.named_parameters() if n in wrc_names)
    assert _meta_model("cspwrc_n", wrc_weights="none").no_weight_decay() == set()


def test_group_matcher_puts_wrc_with_its_block() -> None:
    model = _meta_model("cspwrc_s")
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert len(groups) > 2
    owner = {name: gid for gid, names in groups.items() for name in names}
    assert owner["stages.1.blocks.2.wrc.weight"] == owner["stages.1.blocks.2.conv1.conv.weight"]


def test_reset_classifier() -> None:
    model = timm.create_model("cspwrc_n")
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    model.reset_classifier(0, "")
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, model.num_features, 2, 2)


def test_wrc_kwargs_and_unknown_kwargs() -> None:
    model = _meta_model("cspwrc_s", wrc_weights="channel", wrc_normalize="softmax")
    wrcs = [m for m in model.modules() if isinstance(m, WeightedResidual)]
    assert len(wrcs) == 9 and all(w.weights == "channel" and w.normalize == "softmax" for w in wrcs)
    baseline = _meta_model("cspwrc_s", wrc_weights="none")
    assert not any(n.endswith("wrc.weight") for n, _ in baseline.named_parameters())
    with pytest.raises(TypeError):
        timm.create_model("cspwrc_n", not_a_model_arg=1)
    with pytest.raises(ValueError, match="normalize"):
        timm.create_model("cspwrc_n", wrc_normalize="sigmoid")


def test_layer_overrides_drop_path_dtype() -> None:
    model = timm.create_model("cspwrc_n", act_layer="relu", drop_path_rate=0.1, dtype=torch.float64)
    assert not any(isinstance(m, nn.SiLU) for m in model.modules())
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert len(rates) == 6 and rates == sorted(rates) and rates[-1] == pytest.approx(0.1)  # first block: rate 0
    assert all(p.dtype == torch.float64 for p in model.parameters())
    layer_norm = _meta_model("cspwrc_n", norm_layer="layernorm2d")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in layer_norm.modules())
    meta = _meta_model("cspwrc_n")
    assert all(p.device.type == "meta" for p in meta.parameters())


@pytest.mark.parametrize("output_stride", [16, 8])
def test_output_stride(output_stride: int) -> None:
    model = timm.create_model("cspwrc_n", features_only=True, output_stride=output_stride).eval()
    assert max(model.feature_info.reduction()) == output_stride
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [64 // r for r in model.feature_info.reduction()]


def test_torchscript_and_fx() -> None:
    model = timm.create_model("cspwrc_n", wrc_weights="channel", wrc_normalize="relu").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected)
        fx = timm.models.create_feature_extractor(model, return_nodes={"head.fc": "logits"})
        torch.testing.assert_close(fx(x)["logits"], expected)


def test_pretrained_cfgs() -> None:
    assert sorted(timm.list_pretrained("cspwrc*")) == [f"cspwrc_{s}.c2ns_in1k" for s in ("l", "m", "x")]
    cfg = _meta_model("cspwrc_m").pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/cs3darknet_m.c2ns_in1k"
    assert cfg["input_size"] == (3, 256, 256) and cfg["pool_size"] == (8, 8)
    assert cfg["first_conv"] == "stem.conv1.conv" and cfg["classifier"] == "head.fc"
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    model = timm.create_model("cspwrc_n").eval()
    assert model(torch.randn(1, 3, 256, 256)).shape == (1, 1000)
    assert model.forward_features(torch.randn(1, 3, 256, 256)).shape[-2:] == (8, 8)


def test_stages_are_csp_stages() -> None:
    assert all(isinstance(s, CspStage) for s in _meta_model("cspwrc_s").stages)
