"""tools/compare_backbones.py (cspwrc.experiments.compare, paired_stats): variants, reuse of finished runs, the
paired statistics and the report (the training runs themselves are the engine's tests)."""

import json

import pytest

from cspwrc.errors import InputError
from cspwrc.experiments import compare, paired_stats


def test_variant_with_timm_kwargs_parses_values_as_yaml():
    assert compare.parse_variant("cspwrc_s") == ("cspwrc_s", {})
    assert compare.parse_variant("cspwrc_s:wrc_weights=none,drop_path_rate=0.1") == (
        "cspwrc_s", {"wrc_weights": "none", "drop_path_rate": 0.1})


def test_malformed_variant_is_an_error():
    with pytest.raises(InputError, match="MODEL:key=value"):
        compare.parse_variant("cspwrc_s:wrc_weights")


def test_variant_args_match_variants_that_contain_equals_signs():
    variants = ["cspwrc_s", "cspwrc_s:wrc_weights=none", "resnet18"]
    extra = compare._variant_args(["cspwrc_s:wrc_weights=none=--epochs 3 --set optim.lr=0.01",
                                   'resnet18=--epochs 8'], variants)
    assert extra == {"cspwrc_s:wrc_weights=none": ["--epochs", "3", "--set", "optim.lr=0.01"],
                     "resnet18": ["--epochs", "8"]}


def test_variant_args_for_a_variant_not_compared_is_an_error():
    with pytest.raises(InputError, match="bad --variant-args"):
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
    assert paired_stats.t_quantile_975(1) == 12.706
    assert paired_stats.t_quantile_975(2) == 4.303
    assert paired_stats.t_quantile_975(31) == pytest.approx(2.040, abs=2e-3)
    assert paired_stats.t_quantile_975(60) == pytest.approx(2.000, abs=2e-3)
    assert paired_stats.t_quantile_975(1000) == pytest.approx(1.962, abs=1e-3)
    with pytest.raises(ValueError):
        paired_stats.t_quantile_975(0)


def test_paired_interval_by_hand():
    """Diffs 0.02, 0.01, 0.03: mean 0.02, sd 0.01, half-width t(0.975, 2) * 0.01 / sqrt(3) = 0.024843."""
    arm = {0: 0.32, 1: 0.41, 2: 0.23, 7: 0.9}      # seed 7 has no partner: ignored
    base = {0: 0.30, 1: 0.40, 2: 0.20}
    p = paired_stats.paired_interval(arm, base)
    assert p["n"] == 3
    assert p["mean"] == pytest.approx(0.02)
    assert p["std"] == pytest.approx(0.01)
    assert (p["low"], p["high"]) == (pytest.approx(0.02 - 0.024843, abs=1e-6), pytest.approx(0.02 + 0.024843, abs=1e-6))
    assert paired_stats.verdict(p) == "no measurable difference"


def test_pairing_removes_shared_seed_noise():
    """Seeds move both arms together (0.1 .. 0.5): unpaired spreads overlap, the paired interval excludes 0."""
    base = {0: 0.10, 1: 0.30, 2: 0.50, 3: 0.20}
    arm = {s: v + 0.01 + 0.001 * s for s, v in base.items()}
    p = paired_stats.paired_interval(arm, base)
    assert p["low"] > 0 and paired_stats.verdict(p) == "better"
    assert paired_stats.verdict(paired_stats.paired_interval(base, arm)) == "worse"
    assert paired_stats.verdict(paired_stats.paired_interval({0: 0.2}, {0: 0.1})) == "too few seeds"


def test_arm_statistics_and_report_from_finished_runs(tmp_path):
    rows = []
    for seed, (plain, wrc) in enumerate([(0.10, 0.12), (0.20, 0.21), (0.15, 0.18)]):
        for variant, value in ((compare.PLAIN, plain), ("cspwrc_s", wrc)):
            rows.append({"variant": variant, "seed": seed, "map": value})
    stats = {s["arm"]: s for s in paired_stats.arm_statistics(rows, compare.PLAIN)}
    assert stats[compare.PLAIN]["mean"] == pytest.approx(0.15) and "paired" not in stats[compare.PLAIN]
    assert stats["cspwrc_s"]["paired"]["mean"] == pytest.approx(0.02)
    text = paired_stats.stats_table(list(stats.values()), compare.PLAIN)
    assert "| cspwrc_s | 0,1,2 | 0.1700 ± 0.0458 | +0.0200 (n=3) |" in text
    paired_stats.plot_statistics(list(stats.values()), rows, compare.PLAIN, tmp_path / "stats.png")
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


def test_report_loads_and_counts_each_checkpoint_once(tmp_path, monkeypatch):
    """table.md and the printed report share one rendering: one cost count (checkpoint load + FLOPs) per run."""
    costed = []
    monkeypatch.setattr(compare, "run_cost", lambda run_dir: costed.append(run_dir) or (1.0, 2.0))
    rows = [{"variant": compare.PLAIN, "seed": s, "epochs": 3, "map": 0.1 * (s + 1), "map50": 0.3,
             "train_time_s": 10.0, "cpu_time_s": 12.5, "run_dir": str(tmp_path / f"run{s}")} for s in range(2)]
    text = compare.write_report(rows, tmp_path, compare.PLAIN)
    assert sorted(costed) == [str(tmp_path / "run0"), str(tmp_path / "run1")]
    assert (tmp_path / "table.md").read_text() in text + "\n" and "| 1.00 | 2.00 |" in text


def test_runs_train_through_the_cli(tmp_path, monkeypatch):
    """A variant's run is `cspwrc train` in a child process, with its backbone kwargs as a --set override."""
    commands = []

    def fake_run(cmd, check):
        commands.append(cmd)
        run_dir = tmp_path / "cspwrc_s_wrc_weights-none_seed1"
        (run_dir / "metrics.json").write_text('{"map": 0.5, "map50": 0.7, "epochs": 3, "train_time_s": 10.0}')

    monkeypatch.setattr(compare.subprocess, "run", fake_run)
    (tmp_path / "cspwrc_s_wrc_weights-none_seed1").mkdir()
    row = compare.run_variant(compare.PLAIN, 1, tmp_path, ["--epochs", "2"], retrain=False)
    (cmd,) = commands
    assert cmd[1:4] == ["-m", "cspwrc.cli", "train"] and cmd[-2:] == ["--set", 'model.backbone.kwargs='
                                                                      '{"wrc_weights": "none"}']
    assert row["map"] == 0.5 and (tmp_path / "cspwrc_s_wrc_weights-none_seed1" / "cpu_time.json").is_file()
