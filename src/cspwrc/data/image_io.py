"""Reading image files: decode to ``uint8 [H, W, 3]`` RGB, EXIF orientation, and the probe the checks run.

Every way a file can fail to decode (missing, empty, permission, not an image, corrupt or truncated) becomes one
:class:`~cspwrc.errors.SampleReadError` whose message names the file and the reason; the checks
(:mod:`cspwrc.data.checks`) classify and count those, the dataset substitutes the sample, ``cspwrc predict`` skips
the file. Any PIL mode is converted to 8-bit RGB (:func:`to_rgb`).

EXIF orientation: ``exif_transpose=True`` returns the frame viewers show (what detectron2, ``cv2.imread`` and
Ultralytics read); the checks choose per image which frame its annotations were made on (:class:`ImageEntry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cspwrc.errors import SampleReadError, shorten

__all__ = ["EXIF_ORIENTATION", "ImageEntry", "load_image", "oriented_size", "probe_image", "read_rgb", "to_rgb"]

EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # EXIF orientations that rotate by 90/270 degrees


@dataclass(frozen=True)
class ImageEntry:
    """A verified image: COCO id, file path, annotation-frame size and whether to apply EXIF orientation."""

    id: int
    file_name: str
    path: Path
    height: int
    width: int
    exif_transpose: bool


def read_rgb(path: Path, exif_transpose: bool = True, draft_size: int | None = None,
             header: dict[str, Any] | None = None) -> np.ndarray:
    """Open, decode fully and convert to ``uint8 [H, W, 3]`` RGB. Raises :class:`SampleReadError`.

    ``exif_transpose``: apply the EXIF orientation (the default: the frame COCO and viewers use). ``draft_size``:
    let a JPEG decode at a reduced size of at least that many pixels a side (DCT-domain downscale). ``header``, if
    given, receives the stored size ``raw: [w, h]`` and the EXIF ``orientation`` read in the same open (before a
    draft decode shrinks the size), so a probe reads each file once.
    """
    name = shorten(path)
    try:
        if path.stat().st_size == 0:
            raise SampleReadError(f"empty file {name}")
        with Image.open(path) as im:
            if header is not None:
                header["raw"] = list(im.size)
                header["orientation"] = int(im.getexif().get(EXIF_ORIENTATION, 1))
            if draft_size and im.format == "JPEG":
                # DCT-domain downscale: decodes big JPEGs 2-8x faster when the letterbox shrinks them anyway.
                im.draft("RGB", (draft_size, draft_size))
            im.load()  # full decode: truncated/corrupt data fails here, not later in a worker
            if exif_transpose:
                im = ImageOps.exif_transpose(im)
            return np.asarray(to_rgb(im))  # converted inside ``with``: the file handle closes afterwards
    except SampleReadError:
        raise
    except FileNotFoundError as e:
        raise SampleReadError(f"image file missing: {name}") from e
    except PermissionError as e:
        raise SampleReadError(f"image file unreadable (permission denied): {name}") from e
    except UnidentifiedImageError as e:
        raise SampleReadError(f"not an image: {name}") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # str(e) repeats the path for OS errors (e.g. "File name too long: '...'")
        raise SampleReadError(f"corrupt or truncated image {name}: {shorten(e, 200)}") from e


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: 16/32-bit gray is scaled (not clipped), alpha is dropped."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.float32)
        # 16-bit data spans 0..65535; PIL's own convert would clip everything above 255 to white.
        arr = np.clip(arr / 257.0, 0, 255).astype(np.uint8)
        im = Image.fromarray(arr, mode="L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), mode="L")
    elif im.mode in ("P", "PA", "LA") or (im.mode == "RGBA"):
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def load_image(entry: ImageEntry, draft_size: int | None = None) -> np.ndarray:
    """Read a verified image as ``uint8 [H, W, 3]`` RGB in its annotation frame (maybe JPEG-draft reduced).

    Raises :class:`SampleReadError` if the file broke after the check or its frame no longer matches.
    """
    arr = read_rgb(entry.path, entry.exif_transpose, draft_size)
    h, w = arr.shape[:2]
    # A draft-reduced image keeps the aspect ratio; anything else means the file changed under us.
    if abs(h * entry.width - w * entry.height) > max(h, w, entry.height, entry.width):
        raise SampleReadError(f"image {shorten(entry.path)} is {w}x{h}, annotations say {entry.width}x{entry.height}")
    return arr


def probe_image(path: Path) -> dict[str, Any]:
    """Decode an image once; return ``{"raw": [w, h], "orientation": int}`` or ``{"error": reason}``."""
    header: dict[str, Any] = {}
    try:
        read_rgb(path, exif_transpose=False, draft_size=256, header=header)  # classifies every unreadable case
    except SampleReadError as e:
        return {"error": str(e)}
    orientation = header["orientation"]
    return {"raw": header["raw"], "orientation": orientation if 1 <= orientation <= 8 else 1}


def oriented_size(probe: dict[str, Any]) -> tuple[int, int]:
    """``(width, height)`` of a probed image after its EXIF orientation (the frame viewers show)."""
    raw_w, raw_h = probe["raw"]
    return (raw_h, raw_w) if probe["orientation"] in _SWAPS_AXES else (raw_w, raw_h)
