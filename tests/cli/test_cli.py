"""The ``cspwrc`` console script: dispatch, usage, the shared error path (exit codes, --debug)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cspwrc.cli import guarded
from cspwrc.cli.main import COMMANDS, main
from cspwrc.errors import InputError, RunStopped


def test_usage_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS)


def test_no_or_unknown_command_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_guarded_maps_errors_to_exit_codes(capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSPWRC_DEBUG", raising=False)

    def bad_input() -> int:
        raise InputError("data.yaml: train: missing key 'ann'")

    def stopped() -> int:
        raise RunStopped("loss is nan at epoch 3")

    assert guarded(bad_input) == 2
    err = capsys.readouterr().err
    assert err == "error: data.yaml: train: missing key 'ann'\n"      # one line, no traceback
    assert guarded(stopped) == 3
    assert capsys.readouterr().err.startswith("stopped: loss is nan")
    assert guarded(bad_input, debug=True) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("CSPWRC_DEBUG", "1")
    assert guarded(bad_input) == 2
    assert "Traceback" in capsys.readouterr().err


def test_console_module_runs_a_command() -> None:
    """``python -m cspwrc.cli`` (what the installed ``cspwrc`` script calls) reaches a command's own --help."""
    proc = subprocess.run([sys.executable, "-m", "cspwrc.cli", "merge", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "--out" in proc.stdout
