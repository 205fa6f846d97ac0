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


def test_variant_args_match_variants_that_contain_equals_signs():
    variants = ["cspwrc_s", "cspwrc_s:wrc_weights=none", "resnet18"]
    extra = compare._variant_args(["cspwrc_s:wrc_weights=none=--epochs 3 --set optim.lr=0.01",
                                   'resnet18=--epochs 8'], variants)
    assert extra == {"cspwrc_s:wrc_weights=none": ["--epochs", "3", "--set", "optim.lr=0.01"],
                     "resnet18": ["--epochs", "8"]}


def test_variant_args_for_a_variant_not_compared_is_an_error():
    with pytest.raises(SystemExit, match="bad --variant-args"):
        compare._variant_args(["resnet50=--epochs 2"], ["cspwrc_s"])


def test_finished_run_is_reused_not_retrained(tmp_path, monkeypatch):
    run_dir = tmp_path / "cspwrc_s_seed0"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"map": 0.5, "map50": 0.7, "epochs": 3, "train_time_s": 10.0}')
    (run_dir / "cpu_time.json").write_text('{"cpu_time_s": 12.5}')
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was retrained"))
    row = compare.run_variant("cspwrc_s", 0, tmp_path, [], retrain=False)
    assert (row["map"], row["cpu_time_s"], row["run_dir"]) == (0.5, 12.5, str(run_dir))
