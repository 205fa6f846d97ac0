"""Where ``cspwrc predict`` reads from and what it writes videos with: the images and videos a ``--source`` names
(a file, a folder, a glob), the frames of a video, and a video writer (OpenCV)."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from cspwrc.atomic import WriteError
from cspwrc.errors import InputError, shorten

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "list_sources", "open_video", "predict_video", "video_frames"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv"}


def _media(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES


def list_sources(source: str) -> list[Path]:
    """The images and videos ``--source`` names: a file, a folder (sorted, not recursive) or a glob."""
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and _media(p))
    elif glob.has_magic(source):
        found = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file() and _media(Path(p)))
    else:
        raise InputError(f"--source {shorten(source)}: no such file or folder (nor a glob pattern)")
    if not found:
        kinds = " ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise InputError(f"--source {shorten(source)}: no images or videos ({kinds}) found")
    return found


def video_frames(path: Path) -> tuple[Iterator[np.ndarray], float]:
    """RGB frames [H, W, 3] of a video and its frame rate; InputError if OpenCV cannot open it."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path}: OpenCV cannot open this video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    return
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            cap.release()

    return frames(), fps


def open_video(path: Path, fps: float, width: int, height: int) -> cv2.VideoWriter:
    video = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not video.isOpened():
        raise WriteError(f"could not write {path}: OpenCV cannot open an mp4v video writer there")
    return video


def predict_video(path: Path, out: Path, predict: Callable[[Path, np.ndarray, int | None], np.ndarray]) -> None:
    """Every frame of the video ``path`` through ``predict`` (which returns it drawn), into ``out/STEM.mp4``."""
    frames, fps = video_frames(path)
    target = out / f"{path.stem}.mp4"
    video, count = None, 0
    for count, frame in enumerate(frames, 1):
        if video is None:  # sized by the first frame (container headers may not say)
            video = open_video(target, fps, frame.shape[1], frame.shape[0])
        video.write(cv2.cvtColor(predict(path, frame, count - 1), cv2.COLOR_RGB2BGR))
    if video is not None:
        video.release()
    print(f"{path.name}: {count} frames -> {target}")
