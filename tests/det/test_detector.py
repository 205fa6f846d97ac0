"""YoloDetector: shapes, the torchvision-style API, configuration, freezing, fusion and tracing."""

import copy
import dataclasses
import json

import pytest
import timm
import torch
from timm.layers import FrozenBatchNormAct2d, SyncBatchNormAct

from cspwrc.deploy.cost import count_flops
from cspwrc.det import DetectionLoss, RawPredictions, build_detector
from cspwrc.det.detector import DetectorConfig, select_feature_levels
from cspwrc.det.head import DecoupledHead, HeadCfg, decode_boxes, make_anchor_points
from cspwrc.validate import merge

# test_byobnet: timm's 0.2M-parameter test model, features at strides 2..32 (channels 24..256).
TINY = dict(backbone={"name": "test_byobnet"}, num_classes=3, neck={"channels": [32, 48, 64]})


def tiny_detector(**sections):
    """The TINY detector with ``sections`` merged over it key by key (``neck={"shortcut": True}`` keeps its width)."""
    return build_detector(**merge(TINY, sections))


def _targets():
    return [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 30.0], [30.0, 20.0, 60.0, 60.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without boxes
    ]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_detector(**TINY)


def test_output_shapes_per_level(tiny):
    x = torch.rand(2, 3, 64, 96)
    outs = tiny.forward_features(x)
    reg_max = tiny.cfg.head.reg_max
    assert [tuple(o.shape) for o in outs] == [(2, 4 * reg_max + 3, 64 // s, 96 // s) for s in (8, 16, 32)]
    tiny.eval()
    raw = tiny.forward_raw(x)
    assert raw.shape == (2, 8 * 12 + 4 * 6 + 2 * 3, 4 + 3)
    assert ((raw[..., 4:] >= 0) & (raw[..., 4:] <= 1)).all()
    assert (raw[..., 2:4] >= raw[..., :2]).all()


def test_anchor_points_and_decode_boxes():
    points, strides = make_anchor_points([(2, 3), (1, 1)], [8, 16], device=torch.device("cpu"), dtype=torch.float32)
    assert points.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8]]
    assert strides.flatten().tolist() == [8] * 6 + [16]
    # A one-hot distribution on bin 2 for every side = distance 2 strides.
    logits = torch.full((1, 7, 4, 16), -1e4)
    logits[..., 2] = 0
    boxes = decode_boxes(logits, points, strides)
    torch.testing.assert_close(boxes[0, 0], torch.tensor([-12.0, -12.0, 20.0, 20.0]))
    torch.testing.assert_close(boxes[0, 6], torch.tensor([-24.0, -24.0, 40.0, 40.0]))


def test_direct_regression_decodes_softplus_distances_in_strides():
    """reg_max 1: the four outputs give the side distances (stride units) through a softplus: no softmax, and no
    inverted box whatever the output (a negative raw distance cannot happen)."""
    points, strides = make_anchor_points([(1, 2)], [8], device=torch.device("cpu"), dtype=torch.float32)
    dist = torch.tensor([[1.0, 2.0, 3.0, 0.5], [0.25, 4.0, 1e-3, 1.0]])
    out = torch.log(torch.expm1(dist))[None, ..., None]  # [1, 2, 4, 1], softplus^-1
    boxes = decode_boxes(out, points, strides)
    torch.testing.assert_close(boxes[0], torch.tensor([[-4.0, -12.0, 28.0, 8.0], [10.0, -28.0, 12.008, 12.0]]))
    wild = decode_boxes(torch.randn(1, 2, 4, 1) * 50, points, strides)[0]
    assert (wild[:, 2:] >= wild[:, :2]).all()


@pytest.mark.parametrize("cls_branch", ["conv", "dw"])
def test_yolo26_head_shapes_flops_and_folding(cls_branch):
    """reg_max 1 (4 box channels, a box branch of max(16, C3 // 4) channels) and the depthwise class branch: the
    outputs have the documented shapes, the head costs a fraction of the DFL head, and it folds exactly."""
    model = _trained_like(tiny_detector(head={"reg_max": 1, "cls_branch": cls_branch}))
    dfl = _trained_like(tiny_detector())
    x = torch.rand(2, 3, 64, 64)
    outs = model.forward_features(x)
    assert [o.shape[1] for o in outs] == [4 + 3] * 3
    assert model.head.box_branches[0][-1].in_channels == max(16, model.neck.out_channels[0] // 4)
    feats = [f[:1] for f in model.neck(model.backbone(x))]
    flops = {name: count_flops(lambda f, m=m: m.head(f), feats) for name, m in (("ours", model), ("dfl", dfl))}
    assert flops["ours"] < (0.8 if cls_branch == "conv" else 0.4) * flops["dfl"]
    depthwise = [m for m in model.head.cls_branches.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert bool(depthwise) == (cls_branch == "dw")
    with torch.no_grad():
        ref = model.forward_raw(x)
        torch.testing.assert_close(copy.deepcopy(model).fold().forward_raw(x), ref, atol=1e-4, rtol=0)
    model.train().set_epoch(10)
    losses = model(x, _targets())
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_dfl"] > 0
    losses["loss"].backward()
    assert model.head.box_branches[0][-1].weight.grad.abs().sum() > 0


def test_end_to_end_head_trains_both_branches_and_predicts_without_nms():
    """head.end2end: the one-to-one branch sees detached features (its loss alone reaches no backbone weight), the
    one-to-many loss trains everything; eval uses the one-to-one branch and a top-k, and folds exactly."""
    model = tiny_detector(head={"reg_max": 1, "cls_branch": "dw", "end2end": True}).train()
    model.set_epoch(5, 10)
    x = torch.rand(2, 3, 64, 64)
    outputs = model.train_outputs(x)
    assert len(outputs) == 2 and outputs[1].cls_logits.shape == outputs[0].cls_logits.shape
    o2o = model.criterion(outputs[1], _targets(), (64, 64), one2one=True)
    o2o["loss"].backward(retain_graph=True)
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.head.box_branches.parameters())
    assert model.head.o2o_cls_branches[0][-1].weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    losses = model(x, _targets())
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model = _trained_like(model)
    model.cfg.post.max_det = 7
    with torch.no_grad():
        raw = model.forward_raw(x)
        torch.testing.assert_close(raw, torch.cat((model.head.decode(model.head.one2one(model._neck(x))).boxes,
                                                   model.head.decode(model.head.one2one(model._neck(x))).cls_logits
                                                   .sigmoid()), -1))
        dets = model(x)
        assert all(len(d["scores"]) <= 7 for d in dets)
        torch.testing.assert_close(copy.deepcopy(model).fold().forward_raw(x), raw, atol=1e-4, rtol=0)


def test_head_prior_bias():
    head = DecoupledHead([16, 16, 16], num_classes=5, cfg=HeadCfg(prior_prob=0.01))
    out = head([torch.zeros(1, 16, 2, 2)] * 3)
    box_logits, cls_logits = head.flatten(out)
    assert box_logits.shape == (1, 12, 4, 16) and cls_logits.shape == (1, 12, 5)
    # Zero input: the branches output their bias (BN in train mode maps a constant map to its shift = 0).
    torch.testing.assert_close(cls_logits.sigmoid(), torch.full_like(cls_logits, 0.01), atol=1e-3, rtol=0)


def test_train_losses_and_eval_detections(tiny):
    tiny.train()
    x = torch.rand(2, 3, 64, 64)
    losses = tiny(x, _targets())
    assert set(losses) == {"loss_cls", "loss_box", "loss_dfl", "loss"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(losses["loss"], losses["loss_cls"] + losses["loss_box"] + losses["loss_dfl"])
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny.parameters() if p.grad is not None)
    tiny.eval()
    with torch.no_grad():
        dets = tiny(x)
    assert len(dets) == 2
    for d in dets:
        assert d["boxes"].dtype == torch.float32 and d["boxes"].shape[1] == 4
        assert d["scores"].shape == d["labels"].shape and d["labels"].dtype == torch.int64
        assert len(d["scores"]) <= tiny.cfg.post.max_det
    with pytest.raises(ValueError, match="needs targets"):
        tiny.train()(x)


def test_batch_without_any_box_has_finite_background_loss(tiny):
    tiny.train()
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    for epoch in (0, 100):  # static assigner and TAL
        tiny.set_epoch(epoch)
        losses = tiny(torch.rand(2, 3, 64, 64), empty)
        assert losses["loss_box"] == 0 and losses["loss_dfl"] == 0
        assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0


def test_set_epoch_switches_assigner(tiny):
    tiny.set_epoch(0)
    assert tiny.criterion.uses_static_assigner
    tiny.set_epoch(tiny.cfg.loss.assigner.static_epochs)
    assert not tiny.criterion.uses_static_assigner


@pytest.mark.parametrize("opts", [dict(loss=dict(cls_loss="varifocal", iou_loss="giou")),
                                  dict(head=dict(reg_max=8), loss=dict(assigner=dict(tal_topk=5))),
                                  dict(head=dict(reg_max=1, cls_branch="dw"))])
def test_loss_options(opts):
    model = tiny_detector(**opts)
    model.train().set_epoch(10)
    losses = model(torch.rand(2, 3, 64, 64), _targets())
    assert all(torch.isfinite(v) for v in losses.values())


def test_config_round_trip_and_unknown_option(tiny):
    cfg = tiny.config
    assert json.loads(json.dumps(cfg)) == cfg and cfg == dataclasses.asdict(tiny.cfg)
    rebuilt = build_detector(**cfg, num_classes=tiny.num_classes)
    assert rebuilt.state_dict().keys() == tiny.state_dict().keys()
    rebuilt.load_state_dict(tiny.state_dict())
    with pytest.raises(ValueError, match=r"build_detector: unknown key 'neck.widht'"):
        tiny_detector(neck={"widht": [1, 2, 3]})
    with pytest.raises(ValueError, match="unknown key 'neck_channels'"):  # the flat spelling is gone from the API
        build_detector("test_byobnet", neck_channels=[32, 48, 64])


def test_nested_sections_and_a_config_build_the_same_detector(tiny):
    cfg = DetectorConfig.from_dict({"head": {"reg_max": 8, "act_layer": "relu"}, "post": {"score_thresh": 0.3},
                                    "loss": {"assigner": {"static_epochs": 2}}})
    assert (cfg.head.reg_max, cfg.head.act_layer, cfg.neck.act_layer) == (8, "relu", "silu")
    assert (cfg.loss.assigner.static_epochs, cfg.post.score_thresh) == (2, 0.3)
    assert DetectorConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    by_cfg = build_detector(cfg=cfg, num_classes=3, backbone="test_byobnet", neck={"channels": [32, 48, 64]})
    by_sections = tiny_detector(head={"reg_max": 8, "act_layer": "relu"}, post={"score_thresh": 0.3},
                                loss={"assigner": {"static_epochs": 2}})
    assert by_cfg.cfg == by_sections.cfg and by_cfg.cfg.backbone.name == "test_byobnet"
    # The defaults the parts get on their own are the ones build_detector users get (stated once).
    assert DetectionLoss(3).cfg == DetectorConfig().loss
    # model.cfg.post is live: eval post-processing follows it.
    old, tiny.cfg.post.max_det = tiny.cfg.post.max_det, 1
    try:
        with torch.no_grad():
            assert all(len(d["scores"]) <= 1 for d in tiny.eval()(torch.rand(2, 3, 64, 64)))
    finally:
        tiny.cfg.post.max_det = old


def test_select_feature_levels():
    assert select_feature_levels([2, 4, 8, 16, 32]) == [2, 3, 4]
    assert select_feature_levels([4, 8, 16, 32, 32]) == [1, 2, 4]  # deepest of equal reductions
    with pytest.raises(ValueError, match="reduction 8"):
        select_feature_levels([16, 16, 16], "vit")


def test_resnet18_backbone_normalisation_from_pretrained_cfg():
    model = build_detector("resnet18", num_classes=2, neck={"channels": [32, 32, 32], "depth": 1})
    assert model.backbone.feature_info.reduction() == [8, 16, 32]
    mean = timm.create_model("resnet18").pretrained_cfg["mean"]
    torch.testing.assert_close(model.pixel_mean.flatten(), torch.tensor(mean))
    assert "pixel_mean" not in model.state_dict()


def test_freeze_bn_and_freeze_stages():
    model = tiny_detector(backbone={"freeze_bn": True})
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in model.backbone.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    # freeze_stages=2: the stem (level 0) and stages.0 (level 1) of test_byobnet.
    model = tiny_detector(backbone={"freeze_stages": 2})
    frozen = {n.split(".")[0] for n, p in model.backbone.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert frozen == {"stem", "stages_0"} and "stages_1" in trainable
    frozen_part = [m for n, m in model.backbone.named_modules() if n.startswith(("stem", "stages_0"))]
    assert any(isinstance(m, FrozenBatchNormAct2d) for m in frozen_part)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen_part)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.stages_1.modules())


def test_sync_bn_uses_timm_converter_and_keeps_activation():
    model = tiny_detector(sync_bn=True)
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
    # The head's conv-norm-acts end in SiLU inside the norm: timm's converter keeps it (torch's would drop it).
    norm = model.head.cls_branches[0][0].bn
    assert isinstance(norm, SyncBatchNormAct) and isinstance(norm.act, torch.nn.SiLU)
    assert isinstance(model.backbone.stem.bn, SyncBatchNormAct)
    assert model.config["sync_bn"] is False  # a checkpoint rebuilds with plain BN (same state dict keys)


def _trained_like(model):
    """Non-trivial BN statistics and WRC weights, so folding is actually exercised."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model.forward_features(torch.rand(2, 3, 64, 64))
        for name, p in model.named_parameters():
            if "wrc" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def test_fold_matches_unfolded_and_reparameterize_model():
    model = _trained_like(tiny_detector(neck={"shortcut": True}))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.forward_raw(x)
        via_timm = timm.utils.reparameterize_model(model)  # a deep copy
        assert copy.deepcopy(model).fuse().state_dict().keys() == copy.deepcopy(model).fold().state_dict().keys()
        fused = model.fold()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.neck.modules())
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.head.modules())
        torch.testing.assert_close(fused.forward_raw(x), ref, atol=1e-4, rtol=0)
        torch.testing.assert_close(via_timm.forward_raw(x), ref, atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_trace_raw_predictions():
    model = _trained_like(build_detector(**TINY))
    x = torch.rand(2, 3, 64, 64)
    x3 = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        expected, expected3 = model.forward_raw(x), model.forward_raw(x3)
        # check_trace re-traces and compares graphs (10 s here); the outputs are compared below instead.
        traced = torch.jit.trace(RawPredictions(model), x, check_trace=False)
        torch.testing.assert_close(traced(x), expected)
        torch.testing.assert_close(traced(x3), expected3)  # another batch size through the same trace


@pytest.mark.parametrize("backbone", ["cspwrc_n", "cs3darknet_s", "resnet18"])
def test_any_timm_backbone_trains_and_cspwrc_folds(backbone):
    model = build_detector(backbone, num_classes=3, neck={"channels": [32, 32, 32], "depth": 1})
    assert model.backbone.feature_info.reduction() == [8, 16, 32]
    losses = model.train()(torch.rand(2, 3, 64, 64), _targets())
    assert torch.isfinite(losses["loss"])
    if backbone == "cspwrc_n":  # gradients reach the backbone; WRC + BN folding through timm's entry point
        losses["loss"].backward()
        assert all(p.grad is not None for p in model.backbone.parameters())
        model = _trained_like(model)
        x = torch.rand(2, 3, 64, 64)
        with torch.no_grad():
            ref = model.forward_raw(x)
            folded = timm.utils.reparameterize_model(model)
            assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
            torch.testing.assert_close(folded.forward_raw(x), ref, atol=1e-4, rtol=0)


def test_pretrained_backbone_from_local_file(tmp_path):
    source = timm.create_model("test_byobnet")
    path = tmp_path / "test_byobnet.pth"
    torch.save(source.state_dict(), path)
    model = tiny_detector(backbone={"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}})
    torch.testing.assert_close(model.backbone.stem.conv.weight, source.stem.conv.weight)
    saved = model.config["backbone"]
    assert saved["pretrained"] is False and saved["pretrained_cfg_overlay"] is None
