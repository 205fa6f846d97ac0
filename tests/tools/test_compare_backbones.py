"""tools/compare_backbones.py: variant parsing (the training runs themselves are the engine's tests)."""

import importlib.util
import json
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
    with pytest.raises(compare.InputError, match="MODEL:key=value"):
        compare.parse_variant("cspwrc_s:wrc_weights")


def test_variant_args_match_variants_that_contain_equals_signs():
    variants = ["cspwrc_s", "cspwrc_s:wrc_weights=none", "resnet18"]
    extra = compare._variant_args(["cspwrc_s:wrc_weights=none=--epochs 3 --set optim.lr=0.01",
                                   'resnet18=--epochs 8'], variants)
    assert extra == {"cspwrc_s:wrc_weights=none": ["--epochs", "3", "--set", "optim.lr=0.01"],
                     "resnet18": ["--epochs", "8"]}


def test_variant_args_for_a_variant_not_compared_is_an_error():
    with pytest.raises(compare.InputError, match="bad --variant-args"):
        compare._variant_args(["resnet50=--epochs 2"], ["cspwrc_s"])


def test_finished_run_is_reused_not_retrained(tmp_path, monkeypatch):
    run_dir = tmp_path / "cspwrc_s_seed0"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"map": 0.5, "map50": 0.7, "epochs": 3, "train_time_s": 10.0}')
    (run_dir / "cpu_time.json").write_text('{"cpu_time_s": 12.5}')
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("a finished run was retrained"))
    row = compare.run_variant("cspwrc_s", 0, tmp_path, [], retrain=False)
    assert (row["map"], row["cpu_time_s"], row["run_dir"]) == (0.5, 12.5, str(run_dir))


# ------------------------------------------------------------------------------------------ statistics


def test_t_quantiles_match_the_tables():
    assert compare.t_quantile_975(1) == 12.706
    assert compare.t_quantile_975(2) == 4.303
    assert compare.t_quantile_975(31) == pytest.approx(2.040, abs=2e-3)
    assert compare.t_quantile_975(60) == pytest.approx(2.000, abs=2e-3)
    assert compare.t_quantile_975(1000) == pytest.approx(1.962, abs=1e-3)
    with pytest.raises(ValueError):
        compare.t_quantile_975(0)


def test_paired_interval_by_hand():
    """Diffs 0.02, 0.01, 0.03: mean 0.02, sd 0.01, half-width t(0.975, 2) * 0.01 / sqrt(3) = 0.024843."""
    arm = {0: 0.32, 1: 0.41, 2: 0.23, 7: 0.9}      # seed 7 has no partner: ignored
    base = {0: 0.30, 1: 0.40, 2: 0.20}
    p = compare.paired_interval(arm, base)
    assert p["n"] == 3
    assert p["mean"] == pytest.approx(0.02)
    assert p["std"] == pytest.approx(0.01)
    assert (p["low"], p["high"]) == (pytest.approx(0.02 - 0.024843, abs=1e-6), pytest.approx(0.02 + 0.024843, abs=1e-6))
    assert compare.verdict(p) == "no measurable difference"


def test_pairing_removes_shared_seed_noise():
    """Seeds move both arms together (0.1 .. 0.5): unpaired spreads overlap, the paired interval excludes 0."""
    base = {0: 0.10, 1: 0.30, 2: 0.50, 3: 0.20}
    arm = {s: v + 0.01 + 0.001 * s for s, v in base.items()}
    p = compare.paired_interval(arm, base)
    assert p["low"] > 0 and compare.verdict(p) == "better"
    assert compare.verdict(compare.paired_interval(base, arm)) == "worse"
    assert compare.verdict(compare.paired_interval({0: 0.2}, {0: 0.1})) == "too few seeds"


def test_arm_statistics_and_report_from_finished_runs(tmp_path):
    rows = []
    for seed, (plain, wrc) in enumerate([(0.10, 0.12), (0.20, 0.21), (0.15, 0.18)]):
        for variant, value in ((compare.PLAIN, plain), ("cspwrc_s", wrc)):
            rows.append({"variant": variant, "seed": seed, "map": value})
    stats = {s["arm"]: s for s in compare.arm_statistics(rows, compare.PLAIN)}
    assert stats[compare.PLAIN]["mean"] == pytest.approx(0.15) and "paired" not in stats[compare.PLAIN]
    assert stats["cspwrc_s"]["paired"]["mean"] == pytest.approx(0.02)
    text = compare.stats_table(list(stats.values()), compare.PLAIN)
    assert "| cspwrc_s | 0,1,2 | 0.1700 ± 0.0458 | +0.0200 (n=3) |" in text
    compare.plot_statistics(list(stats.values()), rows, compare.PLAIN, tmp_path / "stats.png")
    assert (tmp_path / "stats.png").stat().st_size > 1000


def test_report_only_trains_nothing_and_unknown_baseline_is_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: pytest.fail("--report-only trained"))
    assert compare.main(["--out", str(tmp_path), "--report-only", "--variants", "cspwrc_s"]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert compare.main(["--out", str(tmp_path), "--variants", "cspwrc_s", "--baseline", "resnet18"]) == 2
    assert "--baseline 'resnet18'" in capsys.readouterr().err


def test_report_from_records_without_weights(tmp_path, capsys):
    """Runs kept as metrics.json + cpu_time.json only (docs/ablation/) still tabulate; their cost is unknown."""
    for seed, value in enumerate([0.10, 0.20]):
        run_dir = compare.run_dir_of(tmp_path, compare.PLAIN, seed)
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.json").write_text(json.dumps({"map": value, "map50": 0.3, "epochs": 3,
                                                          "train_time_s": 10.0}))
        (run_dir / "cpu_time.json").write_text('{"cpu_time_s": 12.5}')
    assert compare.main(["--out", str(tmp_path), "--report-only", "--seeds", "0", "1", "--variants",
                         compare.PLAIN]) == 0
    assert f"| {compare.PLAIN} | 1 | 3 | 0.2000 | 0.3000 | nan | nan |" in (tmp_path / "table.md").read_text()
