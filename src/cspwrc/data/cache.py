"""cspwrc's cache folder and the image probe cache: each image file is decoded once, not at every start.

:func:`cache_root` is where every cache of the project lives (the probe results below, the embedded shapes data
set). :func:`probe_images` runs :func:`cspwrc.data.image_io.probe_image` over an image set, reusing the results of
files that have not changed since the last run. A missing, damaged or unwritable cache only costs a re-probe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cspwrc.atomic import WriteError, write_json
from cspwrc.data.image_io import probe_image

__all__ = ["PROBE_VERSION", "cache_root", "probe_images"]

log = logging.getLogger("cspwrc.data")

PROBE_VERSION = 1  # bump when the probe logic changes, so old cache entries are ignored


def cache_root() -> Path:
    """Root of cspwrc's caches: ``$CSPWRC_CACHE`` or ``~/.cache/cspwrc``."""
    env = os.environ.get("CSPWRC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cspwrc"


def _stat_key(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _cache_file(image_dir: Path) -> Path:
    digest = hashlib.sha256(f"v{PROBE_VERSION}:{image_dir.resolve()}".encode()).hexdigest()[:24]
    return cache_root() / "checks" / f"{digest}.json"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or damaged cache only costs a re-probe


def _write_cache(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, data, indent=None)
    except (OSError, WriteError) as e:  # read-only home etc.: verification still worked, only the cache is lost
        log.debug("cannot write check cache %s: %s", path, e)


def probe_images(paths: dict[str, Path], image_dir: Path, progress: bool = True,
                 use_cache: bool = True) -> dict[str, Any]:
    """Probe every image (threaded, tqdm bar), reusing cached results whose file stat is unchanged.

    ``paths`` maps each ``file_name`` to its file; the result maps it to :func:`probe_image`'s dict. The cache is
    one JSON per image directory; each entry is keyed by ``file_name`` and stores the file's
    ``(size, mtime_ns, inode)``: hashing the bytes would cost as much as decoding them, which is what the
    cache saves; any rewrite of a file changes its stat. (The JSON side is re-checked every time: cheap.)
    """
    cache_path = _cache_file(image_dir)
    cache = _read_cache(cache_path) if use_cache else {}
    stats = {name: _stat_key(p) for name, p in paths.items()}
    results = {n: cache[n]["result"] for n in paths if stats[n] and n in cache and cache[n].get("stat") == stats[n]}
    todo = [n for n in paths if n not in results]
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            found = pool.map(lambda n: probe_image(paths[n]), todo)
            bar = tqdm(found, total=len(todo), desc=f"checking {image_dir.name}", disable=not progress, leave=False)
            results.update(zip(todo, bar, strict=True))
    if use_cache and todo:
        cache.update({n: {"stat": stats[n], "result": results[n]} for n in todo if stats[n]})
        _write_cache(cache_path, cache)
    return results
