"""The docs' config examples stay true: docs/training.md shows the schema defaults and the default recipe."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cspwrc.engine.config import RunConfig, read_yaml, to_dict

ROOT = Path(__file__).resolve().parents[1]


def _run_config_blocks() -> list[dict]:
    text = (ROOT / "docs" / "training.md").read_text()
    section = text.split("## Run config", 1)[1].split("\n## ", 1)[0]
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", section, flags=re.S)]


def test_training_doc_shows_the_schema_defaults_and_the_default_recipe() -> None:
    defaults, recipe = _run_config_blocks()[:2]
    assert defaults == to_dict(RunConfig()), "docs/training.md's defaults block differs from engine/config.py"
    assert recipe == read_yaml(ROOT / "configs" / "det" / "default.yaml"), \
        "docs/training.md's recipe block differs from configs/det/default.yaml"


def test_onnx_snippets_read_the_size_from_the_model() -> None:
    """An export at --img 320 must run with the documented snippet: no hard-coded 640 in the runtime code."""
    for doc in ("README.md", "docs/deploy.md"):
        text = (ROOT / doc).read_text()
        for snippet in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            if "InferenceSession" in snippet:
                assert "640" not in snippet, doc
