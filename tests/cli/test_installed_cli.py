"""The ``cspwrc`` command outside a source checkout: packaged recipes, ``python -m cspwrc.cli``, a built wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cspwrc.cli.train import (
    DEFAULT_CONFIG,
    REAL_CONFIG,
    RECIPES,
    default_recipe,
    parse_args,
    resolve_config,
)
from cspwrc.engine.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "cspwrc"


def _run(cmd: list[str], cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_recipes_ship_inside_the_package() -> None:
    assert DEFAULT_CONFIG.is_file() and DEFAULT_CONFIG.is_relative_to(PACKAGE.resolve())
    assert default_recipe(parse_args([])) == DEFAULT_CONFIG
    assert default_recipe(parse_args(["--data", "d.yaml"])) == REAL_CONFIG and REAL_CONFIG.is_relative_to(RECIPES)
    assert default_recipe(parse_args(["--config", "sgd"])) == RECIPES / "sgd.yaml"
    assert resolve_config("sgd") == RECIPES / "sgd.yaml" and load_config(resolve_config("sgd")).optim.opt == "sgd"
    # the checkout's configs/det is the same files (docs quote those paths)
    assert (ROOT / "configs" / "det" / "default.yaml").read_bytes() == DEFAULT_CONFIG.read_bytes()
    with pytest.raises(ConfigError, match=r"not a packaged recipe.*default.*sgd"):
        resolve_config("sdg")
    assert resolve_config("my/run.yaml") == Path("my/run.yaml")  # paths stay paths


def test_module_cli_from_another_folder(tmp_path: Path) -> None:
    proc = _run([sys.executable, "-m", "cspwrc.cli", "train", "--help"], tmp_path, ROOT / "src")
    assert proc.returncode == 0 and "--exist-ok" in proc.stdout and "packaged recipe" in proc.stdout


@pytest.mark.slow
def test_built_wheel_runs_without_the_checkout(tmp_path: Path) -> None:
    """Build the wheel from a copy of the project, install it into a folder, and use it from elsewhere."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", source / "src", symlinks=False, ignore=ignore)  # the configs link becomes files
    shutil.copytree(ROOT / "configs", source / "configs", ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                 tmp_path, tmp_path)
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build wheels here: {build.stderr[-300:]}")
    assert build.returncode == 0, build.stderr[-2000:]
    site = tmp_path / "site"
    wheel = next((tmp_path / "dist").glob("cspwrc-*.whl"))
    install = _run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], tmp_path, tmp_path)
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = _run([sys.executable, "-c", "import cspwrc.cli.train as t; print(t.default_recipe(t.parse_args([]))); "
                  "print(t.load_config(t.resolve_config('real')).model.backbone.name)"], elsewhere, site)
    assert probe.returncode == 0, probe.stderr[-2000:]
    recipe, model = probe.stdout.split()
    assert Path(recipe).is_relative_to(site) and model == "cspwrc_s"
    script = _run([str(site / "bin" / "cspwrc"), "train", "--help"], elsewhere, site)
    assert script.returncode == 0 and "--exist-ok" in script.stdout, script.stderr[-2000:]
