"""The docs stay true: docs/training.md shows the schema defaults and the default recipe, and every Python example
of README.md and docs/*.md runs (or says why it cannot here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
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


# ----------------------------------------------------------------------------------------------- runnable examples
# Every ```python block of README.md and docs/*.md runs, top to bottom, one namespace per page (a page reads as one
# session: a later block may use an earlier block's names), from the project root (the docs' paths are relative to
# it). A block that needs data, weights, a GPU or the network is marked by the line before its fence,
# `<!-- not-run: REASON -->`, and skipped with that reason. The others are meant to take a few seconds each on CPU.
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.+?)\s*-->")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Example:
    doc: Path
    line: int  # of the code's first line
    code: str
    not_run: str | None  # the reason, for a marked block

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def _examples(doc: Path) -> list[Example]:
    text, found = doc.read_text(), []
    for match in re.finditer(r"^```python\n(.*?)^```", text, flags=re.S | re.M):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.fullmatch(before.strip())
        line = text.count("\n", 0, match.start()) + 2
        found.append(Example(doc, line, match.group(1), marker.group(1) if marker else None))
    return found


EXAMPLES = [example for doc in DOCS for example in _examples(doc)]
_pages: dict[Path, tuple[dict[str, Any], set[int]]] = {}  # per page: its namespace and the lines already run


def _run(example: Example) -> None:
    namespace, done = _pages.setdefault(example.doc, ({"__name__": "__doc_example__"}, set()))
    # Padding keeps a traceback's line numbers those of the page.
    code = compile("\n" * (example.line - 1) + example.code, str(example.doc), "exec")
    exec(code, namespace)  # the project's own documentation, run on purpose
    done.add(example.line)


def test_every_page_has_its_examples_found() -> None:
    assert len(EXAMPLES) >= 20 and all(e.code.strip() for e in EXAMPLES)
    assert any(e.not_run for e in EXAMPLES) and any(not e.not_run for e in EXAMPLES)


@pytest.mark.parametrize("example", EXAMPLES, ids=str)
def test_doc_example_runs(example: Example, monkeypatch: pytest.MonkeyPatch) -> None:
    if example.not_run:
        pytest.skip(f"not-run: {example.not_run}")
    monkeypatch.chdir(ROOT)
    _, done = _pages.get(example.doc, ({}, set()))
    for earlier in _examples(example.doc):  # a block selected alone still sees the page's earlier names
        if earlier.line < example.line and not earlier.not_run and earlier.line not in done:
            _run(earlier)
    _run(example)
