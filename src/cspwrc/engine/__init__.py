"""cspwrc.engine: run config, checkpoints, training loop, COCO evaluation, DDP helpers.

Importing ``cspwrc.engine`` or any of its modules runs this file, which imports :mod:`.callbacks`,
:mod:`.checkpoint`, :mod:`.config` and :mod:`.evaluate`: the detector side (:mod:`cspwrc.det`, timm) and
pycocotools come with every engine import. Code that only runs a trained detector needs no engine:
:mod:`cspwrc.det.load` (``load_detector``, re-exported here) and :mod:`cspwrc.det.predict`.
"""

from cspwrc.det.load import load_detector
from cspwrc.engine.callbacks import Callback
from cspwrc.engine.checkpoint import CheckpointError, read_state, read_weights, save_checkpoint
from cspwrc.engine.config import ConfigError, RunConfig, load_config
from cspwrc.engine.evaluate import EvalResult, coco_evaluate, evaluate

__all__ = [
    "Callback", "CheckpointError", "ConfigError", "EvalResult", "RunConfig", "coco_evaluate", "evaluate", "load_config",
    "load_detector", "read_state", "read_weights", "save_checkpoint",
]
