"""Print (and plot) the learned WRC weights ``a``, ``b`` per block of a cspwrc backbone or detector checkpoint.

Examples:
    python tools/wrc_weights.py --model cspwrc_s                                  # fresh model
    python tools/wrc_weights.py --weights runs/exp/best.safetensors --plot wrc.png  # detector checkpoint
    python tools/wrc_weights.py --model cspwrc_s --weights backbone.pth --wrc-normalize relu

The checkpoint may be a plain backbone state dict (``.safetensors`` or ``.pth``, read with
``torch.load(weights_only=True)``) or a cspwrc detector checkpoint (backbone under ``backbone.``); for the latter
the model name and WRC options come from its ``cspwrc`` metadata unless given here.
"""

import argparse
import sys
from typing import Any

import timm
import torch

import cspwrc  # noqa: F401  (registers the cspwrc_* models)
from cspwrc.backbone import backbone_state_dict, format_wrc_table, plot_wrc_weights, wrc_weights
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.det.load import backbone_section
from cspwrc.engine.config import ConfigError, check_model_name
from cspwrc.errors import CheckpointError
from cspwrc.weights import read_any_weights


def model_kwargs(meta: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """WRC options: command line first, then the detector metadata's ``model.backbone.kwargs``."""
    saved = backbone_section(meta).get("kwargs") or {}
    kwargs = {k: saved[k] for k in ("wrc_weights", "wrc_normalize") if k in saved}
    for key in ("wrc_weights", "wrc_normalize"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs


def build(args: argparse.Namespace) -> torch.nn.Module:
    meta: dict[str, Any] = {}
    state: dict[str, torch.Tensor] | None = None
    if args.weights:
        state, meta = read_any_weights(args.weights)
    name = args.model or backbone_section(meta).get("name")
    if not name:
        raise ConfigError("--model is needed (the checkpoint has no cspwrc metadata naming it)")
    check_model_name(name)
    model = timm.create_model(name, num_classes=0, **model_kwargs(meta, args))
    if state is not None:
        # the classifier (if any) is irrelevant here: the model is built without one
        state = backbone_state_dict(state, like=model.state_dict())
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{args.weights} does not fit {name} {model_kwargs(meta, args)}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="timm model name, e.g. cspwrc_s (default: from the checkpoint metadata)")
    parser.add_argument("--weights", help="backbone or detector checkpoint (.safetensors or .pth)")
    parser.add_argument("--wrc-weights", choices=["scalar", "channel", "none"], help="override the WRC weight type")
    parser.add_argument("--wrc-normalize", choices=["none", "relu", "softmax"], help="override the normalisation")
    parser.add_argument("--plot", help="write a PNG plot of the weights here")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return guarded(lambda: run(args), args.debug)


def run(args: argparse.Namespace) -> int:
    """Exit 2 for an unreadable or non-fitting checkpoint or model name; the table on stdout."""
    rows = wrc_weights(build(args))
    print(format_wrc_table(rows))
    if args.plot and rows:
        print(f"plot: {plot_wrc_weights(rows, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
