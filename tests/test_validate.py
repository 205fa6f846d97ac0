"""The one validator (cspwrc.validate) and the errors its callers raise from it."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from cspwrc.data.checks import DataError, check_keys
from cspwrc.det import build_detector
from cspwrc.det.head import HeadCfg
from cspwrc.engine.config import RunConfig
from cspwrc.errors import ConfigError, InputError
from cspwrc.validate import Fault, build_dataclass, check_value, merge, unknown_key


def test_unknown_key_names_the_nearest_or_lists_the_valid_ones():
    assert unknown_key("epohcs", ["epochs", "batch"]) == "unknown key 'epohcs'; did you mean 'epochs'?"
    assert unknown_key("zzz", ["epochs", "batch"], "option") == "unknown option 'zzz'; valid options: epochs, batch"


@pytest.mark.parametrize("value, tp, expected", [
    (3, float, 3.0), ((1, 2), list[int], [1, 2]), (None, int | None, None), ("a", Literal["a", "b"], "a"),
    ({"k": 1}, dict[str, Any], {"k": 1}), (2, (int, float), 2),
])
def test_check_value_accepts_and_converts(value, tp, expected):
    out = check_value(value, tp)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("value, tp, fault", [
    (True, int, "expected int, got bool True"), ("x", (int, float), "expected int or float, got str"),
    ([1, "2"], list[int], "expected int, got str '2'"), ("c", Literal["a", "b"], "'c' is not one of 'a', 'b'"),
    ([1], dict[str, Any], "expected a mapping"),
])
def test_check_value_faults(value, tp, fault):
    with pytest.raises(Fault, match=fault.replace("[", r"\[")):
        check_value(value, tp)


def test_every_caller_raises_an_input_error_with_the_same_wording():
    with pytest.raises(DataError, match=r"data\.yaml: top level: unknown key 'trian'; did you mean 'train'"):
        check_keys({"trian": 1}, ["train", "val"], "data.yaml", "top level")
    with pytest.raises(ConfigError, match=r"build_detector: unknown key 'head\.reg_maks'; did you mean 'reg_max'"):
        build_detector("cspwrc_n", head={"reg_maks": 8})
    with pytest.raises(ConfigError, match=r"build_detector: post\.score_thresh: expected float, got str"):
        build_detector("cspwrc_n", post={"score_thresh": "high"})
    assert issubclass(DataError, InputError) and issubclass(ConfigError, InputError)


def test_build_dataclass_names_the_dotted_key_also_of_a_range_check():
    assert build_dataclass(RunConfig, {"model": {"head": {"reg_max": 8}}}).model.head.reg_max == 8
    with pytest.raises(Fault, match=r"^model.head.reg_max: must be >= 1 \(1: direct regression, >= 2: DFL bins\), "
                                  r"got 0$"):
        build_dataclass(RunConfig, {"model": {"head": {"reg_max": 0}}})
    with pytest.raises(ConfigError, match=r"^reg_max: must be >= 1"):  # the same check in Python
        HeadCfg(reg_max=0)
    with pytest.raises(Fault, match=r"^unknown key 'model.head.regmax'; did you mean 'reg_max'\?$"):
        build_dataclass(RunConfig, {"model": {"head": {"regmax": 8}}})
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}, "d": 4}) == {"a": {"b": 1, "c": 3}, "d": 4}
