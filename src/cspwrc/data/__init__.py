"""cspwrc.data: COCO-format datasets, augmentation, the embedded shapes data set, checks and loaders.

See ``docs/data.md``. The failure policy lives in :mod:`cspwrc.data.checks`.
"""

from cspwrc.data.checks import CheckReport, DataError, SampleReadError, read_error_message, verify_coco
from cspwrc.data.coco import CocoDetection
from cspwrc.data.config import DataConfig, build_datasets, load_data_config
from cspwrc.data.letterbox import letterbox, letterbox_params
from cspwrc.data.loader import build_loader, collate_detection, count_skipped, prepare_epoch
from cspwrc.data.shapes import ensure_shapes_dataset
from cspwrc.data.transforms import AugmentConfig

__all__ = [
    "AugmentConfig", "CheckReport", "CocoDetection", "DataConfig", "DataError", "SampleReadError",
    "build_datasets", "build_loader", "collate_detection", "count_skipped", "ensure_shapes_dataset",
    "letterbox", "letterbox_params", "load_data_config", "prepare_epoch", "read_error_message", "verify_coco",
]
