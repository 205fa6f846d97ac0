"""CspWrcNet: YOLO-style CSP darknet backbones with weighted residual connections, registered with timm.

Topology = timm's ``cs3darknet_*`` (two-conv stem, four C3 ``CrossStage3`` stages of darknet bottlenecks), with a
WRC ``H(x) = a * F(x) + b * x`` on every bottleneck shortcut. Module names match cs3darknet, so a cs3darknet
checkpoint loads (see :func:`checkpoint_filter_fn`) and, with the WRC weights at their initial value and
``wrc_normalize="none"``, gives identical outputs.

Sizes (width / depth multipliers, as YOLOv5): s 0.5/0.5, m 0.75/0.67, l 1.0/1.0, x 1.25/1.33 have exactly the
channels and depths of ``cs3darknet_s/m/l/x``. ``n`` has no cs3darknet peer and is YOLOv5n's backbone instead
(one-conv stem of 16, stride-2 convs that widen, depths ``round(d * 0.33)`` = 1/2/3/1, PyTorch's default init).
"""

import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn as nn
from huggingface_hub import try_to_load_from_cache
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, LayerType, calculate_drop_path_rates, get_device_dtype, make_divisible
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from timm.models._manipulate import MATCH_PREV_GROUP

from cspwrc.errors import CheckpointError
from cspwrc.layers import CspStage, FoldableConvNormAct

__all__ = ["P3_P5", "CspWrcCfg", "CspWrcNet", "checkpoint_filter_fn", "default_cfgs", "model_cfgs"]

# out_indices of the stride 8, 16, 32 features (index 0 is the stride-2 stem output).
P3_P5 = (2, 3, 4)


@dataclass
class CspWrcCfg:
    """Architecture of a :class:`CspWrcNet`; every field can be overridden by a ``timm.create_model`` kwarg.

    Attributes:
        stem_chs: Output channels of the stem's 3x3 convs (the first has stride 2).
        stage_chs: Output channels of the four stride-2 CSP stages.
        depths: Bottlenecks per stage.
        expand_ratio: CSP expansion (``conv_exp`` channels / stage channels), split in two halves.
        bottle_ratio: Bottleneck hidden channels / bottleneck channels.
        down_growth: The stride-2 conv of a stage goes to the stage's width (YOLOv5) instead of keeping its input
            width (cs3darknet).
        block_type: The stages' bottleneck, a name in :data:`cspwrc.layers.blocks.BLOCK_TYPES` (``"wrc"``).
        wrc_weights: ``"scalar" | "channel" | "none"`` (``"none"``: plain residual, the A/B baseline).
        wrc_normalize: ``"none" | "relu" | "softmax"``.
        act_layer / norm_layer: timm layer names or classes.
        conv_init: ``"fan_out"``: Kaiming-normal fan-out conv weights (timm's cspnet); ``"default"``: PyTorch's own
            (YOLO's), about 2.4x smaller, so the same lr moves them relatively further.
        zero_init_last: Zero-init the last BN of each bottleneck branch (as timm's cspnet).
    """

    stem_chs: tuple[int, ...] = (32, 64)
    stage_chs: tuple[int, ...] = (128, 256, 512, 1024)
    depths: tuple[int, ...] = (3, 6, 9, 3)
    expand_ratio: float = 1.0
    bottle_ratio: float = 1.0
    down_growth: bool = False
    block_type: str = "wrc"
    wrc_weights: str = "scalar"
    wrc_normalize: str = "none"
    act_layer: LayerType = "silu"
    norm_layer: LayerType = "batchnorm"
    conv_init: str = "fan_out"
    zero_init_last: bool = True

    @classmethod
    def scaled(cls, width: float, depth: float) -> "CspWrcCfg":
        """YOLO-style size: widths ``make_divisible(c * width)``, depths ``max(1, int(d * depth))``.

        ``int()`` (not round) is what cs3darknet uses, so s/m/l/x match it; ``max(1, .)`` keeps ``n`` from
        dropping whole stages (``int(3 * 0.33) == 0``).
        """
        base = cls()
        return cls(
            stem_chs=tuple(make_divisible(c * width) for c in base.stem_chs),
            stage_chs=tuple(make_divisible(c * width) for c in base.stage_chs),
            depths=tuple(max(1, int(d * depth)) for d in base.depths),
        )


def _create_stem(
        in_chans: int, cfg: CspWrcCfg, device: torch.device | None, dtype: torch.dtype | None,
) -> nn.Sequential:
    """3x3 stride-2 conv then 3x3 stride-1 convs: ``[B, in_chans, H, W]`` -> ``[B, stem_chs[-1], H/2, W/2]``."""
    stem = nn.Sequential()
    prev = in_chans
    for i, chs in enumerate(cfg.stem_chs):
        stem.add_module(f"conv{i + 1}", FoldableConvNormAct(
            prev, chs, 3, stride=2 if i == 0 else 1, act_layer=cfg.act_layer, norm_layer=cfg.norm_layer,
            device=device, dtype=dtype,
        ))
        prev = chs
    return stem


class CspWrcNet(nn.Module):
    """CSP darknet with weighted residual connections (timm model API).

    ``forward``: ``[B, in_chans, H, W]`` -> logits ``[B, num_classes]``; ``forward_features`` ->
    ``[B, num_features, H/32, W/32]``. Feature taps (``feature_info``): the stem (stride 2) and the four
    stages (strides 4, 8, 16, 32); ``out_indices=(2, 3, 4)`` gives P3-P5.
    """

    def __init__(
            self,
            cfg: CspWrcCfg,
            in_chans: int = 3,
            num_classes: int = 1000,
            output_stride: int = 32,
            global_pool: str = "avg",
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            device: torch.device | None = None,
            dtype: torch.dtype | None = None,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            cfg: Architecture; ``kwargs`` are overlaid onto it (e.g. ``wrc_normalize="relu"``, ``act_layer="relu"``),
                an unknown kwarg raises ``TypeError``.
            in_chans: Input channels.
            num_classes: Classifier classes (0: no classifier, ``forward`` returns pooled features).
            output_stride: 32, 16 or 8; the last stages trade their stride for dilation.
            global_pool: Head pooling type (``''``: none).
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth, linearly increasing over all bottlenecks.
        """
        super().__init__()
        if output_stride not in (8, 16, 32):  # a user's kwarg (--set model.backbone.kwargs.output_stride=4)
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride!r}")
        cfg = replace(cfg, **kwargs)
        dd = dict(device=device, dtype=dtype)
        self.cfg = cfg
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = _create_stem(in_chans, cfg, **dd)
        self.feature_info: list[dict[str, Any]] = [
            dict(num_chs=cfg.stem_chs[-1], reduction=2, module=f"stem.conv{len(cfg.stem_chs)}")]
        self.stages = self._create_stages(cfg, output_stride, drop_path_rate, **dd)

        self.num_features = self.head_hidden_size = cfg.stage_chs[-1]
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self._init_weights(cfg.conv_init, cfg.zero_init_last)

    def _create_stages(
            self, cfg: CspWrcCfg, output_stride: int, drop_path_rate: float,
            device: torch.device | None, dtype: torch.dtype | None,
    ) -> nn.Sequential:
        """Stride-2 CSP stages (dilated past ``output_stride``, as timm's cspnet); appends to ``feature_info``."""
        dpr = calculate_drop_path_rates(drop_path_rate, list(cfg.depths), stagewise=True)
        # what every stage shares, in one mapping; the WRC options pass through the stage to its blocks
        shared = dict(expand_ratio=cfg.expand_ratio, bottle_ratio=cfg.bottle_ratio, down_growth=cfg.down_growth,
                      block_type=cfg.block_type, wrc_weights=cfg.wrc_weights, wrc_normalize=cfg.wrc_normalize,
                      act_layer=cfg.act_layer, norm_layer=cfg.norm_layer, device=device, dtype=dtype)
        stages = []
        prev_chs, reduction, dilation = cfg.stem_chs[-1], 2, 1
        for i, (chs, depth) in enumerate(zip(cfg.stage_chs, cfg.depths, strict=True)):
            stride = 2
            if reduction >= output_stride:
                dilation, stride = dilation * 2, 1
            reduction *= stride
            stages.append(CspStage(prev_chs, chs, depth, stride=stride, dilation=dilation,
                                   first_dilation=1 if dilation in (1, 2) else 2, drop_path=dpr[i], **shared))
            prev_chs = chs
            self.feature_info.append(dict(num_chs=chs, reduction=reduction, module=f"stages.{i}"))
        return nn.Sequential(*stages)

    def _init_weights(self, conv_init: str, zero_init_last: bool) -> None:
        """timm cspnet init: Kaiming-normal (fan-out) convs (``conv_init="fan_out"``; ``"default"`` keeps PyTorch's),
        small-normal classifier, zero last branch BN (``zero_init_last``)."""
        if conv_init not in ("fan_out", "default"):
            raise ValueError(f"conv_init must be 'fan_out' or 'default', got {conv_init!r}")
        for module in self.modules():
            if isinstance(module, nn.Conv2d) and conv_init == "fan_out":
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.01)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif zero_init_last and hasattr(module, "zero_init_last"):
                module.zero_init_last()

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Names of the WRC weights (``*.wrc.weight``): learned mixing ratios, not to be shrunk towards 0."""
        return {name for name, _ in self.named_parameters() if name.endswith("wrc.weight")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\..*transition", MATCH_PREV_GROUP),  # map to last block in stage
                (r"^stages\.(\d+)", (0,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every bottleneck (recomputed in backward; saves activation memory)."""
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, in_features=self.num_features, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward returning intermediate features.

        Args:
            x: Input ``[B, C, H, W]``.
            indices: Take the last n features if int, all if None, those listed if a sequence. Index 0 is the stem
                output, 1-4 the stage outputs (``[2, 3, 4]`` = P3-P5).
            norm: Unused (no final norm).
            stop_early: Stop after the last requested feature.
            output_fmt: Only ``"NCHW"``.
            intermediates_only: Return only the features.

        Returns:
            ``(final features, intermediates)`` or just the intermediates.
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index]
        for i, stage in enumerate(stages):
            x = stage(x)
            if i + 1 in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last requested feature (and the head when asked or when stages go).

        Returns:
            The kept feature indices.
        """
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        prune_end = max_index < len(self.stages)
        self.stages = self.stages[:max_index]
        if prune_end:
            # features now end at the last kept tap; the head was sized for the final features, so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_chans, H, W]`` -> ``[B, num_features, H/32, W/32]``."""
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, num_features, h, w]`` -> ``[B, num_classes]`` (or pooled ``[B, num_features]`` if ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@torch.no_grad()
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: CspWrcNet) -> dict[str, torch.Tensor]:
    """Map a timm ``cs3darknet_*`` (or cspwrc) state dict onto ``model``.

    cs3darknet and cspwrc share every module name, so the tensors carry over unchanged; each WRC weight the
    checkpoint lacks is filled with its initial value 1 (with ``wrc_normalize="none"`` that is exactly the plain
    residual the checkpoint was trained with). A per-block ``[2]`` WRC weight is broadcast to a per-channel
    ``[2, C]`` model weight (same effective ``(a, b)`` for every normalisation).
    """
    out = dict(state_dict)
    for name, target in model.state_dict().items():
        if not name.endswith("wrc.weight"):
            continue
        given = out.get(name)
        if given is None:
            out[name] = torch.ones_like(target, device="cpu")
        elif given.shape != target.shape and given.ndim == 1 and target.ndim == 2:
            out[name] = given[:, None].expand_as(target).clone()
    return out


HUB_HOST = "huggingface.co"
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a hub repo, in order


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _no_weights_message(variant: str, where: str, reason: str) -> str:
    return (f"{variant}: cannot get its pretrained weights ({where}): {reason}. Load a local copy instead: "
            f"timm.create_model({variant!r}, pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/"
            f"weights.pth')) (a cs3darknet or cspwrc .pth/.safetensors); with cspwrc train / tools/train_det.py: "
            f"--weights FILE instead of pretrained=true")


def _check_pretrained_source(variant: str, kwargs: dict[str, Any]) -> None:
    """Fail fast (not after ~45 s of hub retries) when the weights are neither local, cached nor downloadable."""
    # The same resolution build_model_with_cfg does (tag, pretrained_cfg and overlay given to create_model).
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    hub_id = cfg.hf_hub_id
    if cfg.file or cfg.state_dict is not None or not hub_id:
        return  # a local source (timm reports its own faults), or no published weights (timm warns)
    if any(isinstance(try_to_load_from_cache(hub_id, name), str) for name in HUB_WEIGHT_FILES):
        return
    if not _hub_reachable():
        raise CheckpointError(_no_weights_message(variant, f"hub {hub_id}", f"not cached and {HUB_HOST} is "
                                                  "unreachable (offline?)"))


def _create_cspwrc(variant: str, pretrained: bool = False, **kwargs: Any) -> CspWrcNet:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4))
    if pretrained:
        _check_pretrained_source(variant, kwargs)
    try:
        return build_model_with_cfg(
            CspWrcNet, variant, pretrained,
            model_cfg=model_cfgs[variant],
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
            **kwargs,
        )
    except OSError as err:  # hub/url download failures (huggingface_hub, urllib, requests errors are OSErrors)
        if not pretrained:
            raise
        raise CheckpointError(_no_weights_message(variant, "download", str(err))) from err


model_cfgs = dict(
    # YOLOv5n's backbone: CspWrcCfg.scaled(0.25, 0.33) would give an 8-channel stem, stride-2 convs that keep
    # their input width and int()-rounded depths (1, 1, 2, 1): half YOLOv5n's parameters.
    # Its bottlenecks twice as wide (bottle_ratio 2): of the two ways to spend the latency left under YOLOv8n's,
    # this one scored 0.393 mAP in the SHWD hour against 0.380 for twice the depth (2, 4, 6, 2) at 1.1 ms more
    # (docs/race/shwd_60min_v2/ARMS.md, arms G and H).
    cspwrc_n=CspWrcCfg(stem_chs=(16,), stage_chs=(32, 64, 128, 256), depths=(1, 2, 3, 1), down_growth=True,
                       bottle_ratio=2.0, conv_init="default", zero_init_last=False),
    cspwrc_s=CspWrcCfg.scaled(width=0.5, depth=0.5),
    cspwrc_m=CspWrcCfg.scaled(width=0.75, depth=0.67),
    cspwrc_l=CspWrcCfg.scaled(width=1.0, depth=1.0),
    cspwrc_x=CspWrcCfg.scaled(width=1.25, depth=1.33),
)


def resolved_model_args(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """Every architecture field a ``cspwrc_*`` model is built with: its registered :class:`CspWrcCfg` with the
    ``kwargs`` that name a field laid over it (timm's ``model_args`` idea), JSON-ready (tuples as lists); None for
    another model name or for a layer given as a class (not JSON). ``timm.create_model(name, **args)`` rebuilds the
    same architecture even after the registered defaults change."""
    if name not in model_cfgs:
        return None
    names = {f.name for f in fields(CspWrcCfg)}
    cfg = replace(model_cfgs[name], **{k: v for k, v in kwargs.items() if k in names})
    if not all(isinstance(layer, str) for layer in (cfg.act_layer, cfg.norm_layer)):
        return None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 1000, "input_size": (3, 256, 256), "pool_size": (8, 8),
        "crop_pct": 0.887, "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1.conv", "classifier": "head.fc", "license": "apache-2.0",
        **kwargs,
    }


def _cs3darknet_cfg(size: str, **kwargs: Any) -> dict[str, Any]:
    """The ImageNet weights timm publishes for ``cs3darknet_<size>``, loaded through :func:`checkpoint_filter_fn`."""
    release = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-tpu-weights"
    return _cfg(
        hf_hub_id=f"timm/cs3darknet_{size}.c2ns_in1k", url=f"{release}/{kwargs.pop('file')}",
        test_input_size=(3, 288, 288), **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "cspwrc_n.untrained": _cfg(),
    "cspwrc_s.untrained": _cfg(),
    "cspwrc_m.c2ns_in1k": _cs3darknet_cfg("m", file="cs3darknet_m_c2ns-43f06604.pth", test_crop_pct=0.95),
    "cspwrc_l.c2ns_in1k": _cs3darknet_cfg("l", file="cs3darknet_l_c2ns-16220c5d.pth", test_crop_pct=0.95),
    "cspwrc_x.c2ns_in1k": _cs3darknet_cfg(
        "x", file="cs3darknet_x_c2ns-4e4490aa.pth", crop_pct=0.95, test_crop_pct=1.0),
})


@register_model
def cspwrc_n(pretrained: bool = False, **kwargs: Any) -> CspWrcNet:
    return _create_cspwrc("cspwrc_n", pretrained=pretrained, **kwargs)


@register_model
def cspwrc_s(pretrained: bool = False, **kwargs: Any) -> CspWrcNet:
    return _create_cspwrc("cspwrc_s", pretrained=pretrained, **kwargs)


@register_model
def cspwrc_m(pretrained: bool = False, **kwargs: Any) -> CspWrcNet:
    return _create_cspwrc("cspwrc_m", pretrained=pretrained, **kwargs)


@register_model
def cspwrc_l(pretrained: bool = False, **kwargs: Any) -> CspWrcNet:
    return _create_cspwrc("cspwrc_l", pretrained=pretrained, **kwargs)


@register_model
def cspwrc_x(pretrained: bool = False, **kwargs: Any) -> CspWrcNet:
    return _create_cspwrc("cspwrc_x", pretrained=pretrained, **kwargs)
