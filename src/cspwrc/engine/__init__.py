"""cspwrc.engine: run config, checkpoints, training loop, COCO evaluation, DDP helpers.

Heavy imports (the detector, the data side) happen inside the functions that need them, so
``load_detector`` and the config can be used without pulling in the whole training stack.
"""

from cspwrc.engine.callbacks import Callback
from cspwrc.engine.checkpoint import CheckpointError, load_detector, read_state, read_weights, save_checkpoint
from cspwrc.engine.config import ConfigError, RunConfig, load_config
from cspwrc.engine.evaluate import EvalResult, coco_evaluate, evaluate

__all__ = [
    "Callback", "CheckpointError", "ConfigError", "EvalResult", "RunConfig", "coco_evaluate", "evaluate", "load_config",
    "load_detector", "read_state", "read_weights", "save_checkpoint",
]
