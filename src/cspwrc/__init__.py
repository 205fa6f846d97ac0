"""cspwrc: YOLO-style CSP backbones with weighted residual connections (WRC), registered with timm.

``import cspwrc`` registers the ``cspwrc_*`` models with timm, so ``timm.create_model("cspwrc_s")`` works.
"""

__version__ = "0.1.0"

from . import backbone  # noqa: F401  (registers the cspwrc_* models with timm)
