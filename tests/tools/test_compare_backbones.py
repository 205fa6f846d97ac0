"""tools/compare_backbones.py: variant parsing (the training runs themselves are the engine's tests)."""

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "compare_backbones.py"
spec = importlib.util.spec_from_file_location("cspwrc_tool_compare_backbones", TOOL)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def test_variant_with_timm_kwargs_parses_values_as_yaml():
    assert compare.parse_variant("cspwrc_s") == ("cspwrc_s", {})
    assert compare.parse_variant("cspwrc_s:wrc_weights=none,drop_path_rate=0.1") == (
        "cspwrc_s", {"wrc_weights": "none", "drop_path_rate": 0.1})


def test_malformed_variant_is_an_error():
    with pytest.raises(SystemExit, match="MODEL:key=value"):
        compare.parse_variant("cspwrc_s:wrc_weights")
