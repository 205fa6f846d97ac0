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
import json
import pickle
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
import torch
from safetensors import SafetensorError

import cspwrc  # noqa: F401  (registers the cspwrc_* models)
from cspwrc.backbone import backbone_state_dict, format_wrc_table, plot_wrc_weights, wrc_weights
from cspwrc.cli import add_debug_flag, guarded
from cspwrc.engine.checkpoint import CheckpointError
from cspwrc.engine.config import ConfigError, check_model_name


def load_checkpoint(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Tensors and the ``cspwrc`` safetensors metadata (``{}`` for ``.pth`` or a file without it)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("cspwrc", "{}"))
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):  # the containers timm's loader accepts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    return state, {}


def model_kwargs(meta: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    """WRC options: command line first, then the detector metadata's ``options.backbone_kwargs``."""
    saved = (meta.get("options") or {}).get("backbone_kwargs") or {}
    kwargs = {k: saved[k] for k in ("wrc_weights", "wrc_normalize") if k in saved}
    for key in ("wrc_weights", "wrc_normalize"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return kwargs


def build(args: argparse.Namespace) -> torch.nn.Module:
    meta: Dict[str, Any] = {}
    state: Optional[Dict[str, torch.Tensor]] = None
    if args.weights:
        try:
            state, meta = load_checkpoint(Path(args.weights))
        except (OSError, SafetensorError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as err:
            # missing, torn, or carrying a pickled object (refused by weights_only=True)
            raise CheckpointError(f"{args.weights}: not a readable weights file (weights-only .pth or "
                                  f".safetensors): {err}") from err
    name = args.model or meta.get("model")
    if not name:
        raise ConfigError("--model is needed (the checkpoint has no cspwrc metadata naming it)")
    check_model_name(name)
    model = timm.create_model(name, num_classes=0, **model_kwargs(meta, args))
    if state is not None:
        # the classifier (if any) is irrelevant here: the model is built without one
        state = {k: v for k, v in backbone_state_dict(state).items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{args.weights} does not fit {name} {model_kwargs(meta, args)}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def main(argv: Optional[list] = None) -> int:
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
