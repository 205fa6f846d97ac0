"""torchvision FCOS / RetinaNet / Faster R-CNN with a cspwrc backbone: a training step and an eval forward."""

import pytest
import timm
import torch

from cspwrc.det.adapters import fasterrcnn_timm, fcos_timm, retinanet_timm, timm_fpn_backbone

# cspwrc_n at 64 px with a 32-channel FPN keeps each detector step well under a second.
SMALL = dict(out_channels=32, min_size=64, max_size=64)


def test_fpn_backbone_levels_and_channels():
    backbone = timm_fpn_backbone("cspwrc_n", (4, 8, 16, 32), out_channels=32)
    feats = backbone(torch.rand(1, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3"] and backbone.out_channels == 32
    assert [tuple(f.shape) for f in feats.values()] == [(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32)]


@pytest.mark.parametrize("builder", [fcos_timm, retinanet_timm, fasterrcnn_timm])
def test_torchvision_detector_train_step_and_eval(builder):
    torch.manual_seed(0)
    model = builder("cspwrc_n", num_classes=3, **SMALL)
    mean = timm.create_model("cspwrc_n").pretrained_cfg["mean"]
    assert model.transform.image_mean == list(mean)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    # Labels 1..2: Faster R-CNN reserves 0 for background.
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 36.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[20.0, 10.0, 60.0, 60.0], [2.0, 30.0, 20.0, 50.0]]), "labels": torch.tensor([2, 1])},
    ]
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    opt.zero_grad()
    total.backward()
    grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the loss reaches the cspwrc backbone
    opt.step()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    assert out[0]["boxes"].shape[-1] == 4


def test_anchor_sizes_match_levels():
    model = retinanet_timm("cspwrc_n", num_classes=2, **SMALL)
    assert model.anchor_generator.sizes[0] == (32, 40, 50) and model.anchor_generator.sizes[-1][0] == 512
    model = fcos_timm("cspwrc_n", num_classes=2, **SMALL)
    assert [s[0] for s in model.anchor_generator.sizes] == [8, 16, 32, 64, 128]
    model = fasterrcnn_timm("cspwrc_n", num_classes=2, **SMALL)
    assert [s[0] for s in model.rpn.anchor_generator.sizes] == [32, 64, 128, 256, 512]
