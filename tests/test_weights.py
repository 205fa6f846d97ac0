"""cspwrc.weights: the one loader (safetensors metadata, .pth containers, timm's flattened feature names)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cspwrc.errors import CheckpointError
from cspwrc.weights import (
    META_KEY,
    feature_key,
    load_mismatch,
    read_any_weights,
    read_safetensors,
    rename_like,
    state_dict_of,
)


def test_safetensors_metadata_comes_from_safe_open(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(2)}, str(path), metadata={META_KEY: json.dumps({"model": "cspwrc_n"}), "x": "y"})
    tensors, meta = read_safetensors(path)
    assert meta == {"model": "cspwrc_n"} and torch.equal(tensors["a"], torch.ones(2))
    save_file({"a": torch.ones(2)}, str(path), metadata={META_KEY: "{not json"})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_safetensors(path)
    path.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(CheckpointError, match=r"w\.safetensors: not a valid safetensors file"):
        read_safetensors(path)


@pytest.mark.parametrize("container, expected", [
    ({"model": {"w": torch.zeros(1)}, "ema": {"w": torch.ones(1)}, "epoch": 3}, 1.0),  # a training state: EMA
    ({"state_dict": {"module.w": torch.zeros(1)}, "state_dict_ema": {"module.w": torch.ones(1)}}, 1.0),  # timm
    ({"model": {"_orig_mod.w": torch.zeros(1)}, "optimizer": {}}, 0.0),
    ({"w": torch.zeros(1), "step": 5}, 0.0),  # a plain state dict
])
def test_containers_are_unwrapped_in_one_place(tmp_path, container, expected):
    assert state_dict_of(container)["w"].item() == expected
    path = tmp_path / "c.pth"
    torch.save({**container, "meta": {"img": 64}}, path)
    tensors, meta = read_any_weights(path)
    assert list(tensors) == ["w"] and tensors["w"].item() == expected and meta == {"img": 64}


def test_flattened_feature_names_match_the_model_spelling():
    assert feature_key("stages_0.blocks.1") == feature_key("stages.0.blocks.1")
    renamed = rename_like(["stem.conv1.conv.weight", "stages.0.conv_exp.bn.weight"],
                          {"stem_conv1.conv.weight": 1, "stages_0.conv_exp.bn.weight": 2, "head.w": 3})
    assert renamed == {"stem.conv1.conv.weight": 1, "stages.0.conv_exp.bn.weight": 2, "head.w": 3}


def test_load_mismatch_is_one_line():
    """torch's per-tensor lines become a count and the first; a one-line error stays as it is."""
    err = RuntimeError("Error(s) in loading state_dict for Net:\n\tsize mismatch for a.weight: [2] vs [3]\n\t"
                       "Missing key(s) in state_dict: \"b.bias\".")
    assert load_mismatch(err) == "2 differences, first: size mismatch for a.weight: [2] vs [3]"
    assert load_mismatch(ValueError("different number of parameter groups")) == "different number of parameter groups"
