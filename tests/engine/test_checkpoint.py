"""Checkpoints: atomic writes, safetensors metadata, weights_only loading, refusal of pickled payloads."""

import json
import os
import stat

import pytest
import timm
import torch
from safetensors import safe_open

from cspwrc import atomic
from cspwrc.atomic import WriteError
from cspwrc.det import build_detector
from cspwrc.engine import checkpoint as ck
from cspwrc.engine.checkpoint import CheckpointError
from cspwrc.weights import feature_key


class Evil:
    """Unpickling this would run a shell command; the loader must refuse it before that can happen."""

    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def _weights():
    return {"a.weight": torch.randn(3, 4), "a.bias": torch.zeros(3)}


def test_save_and_read_weights_with_meta(tmp_path):
    meta = {"model": "cspwrc_n", "num_classes": 3, "class_names": ["a", "b", "c"], "category_ids": [1, 5, 9], "img": 64}
    w = _weights()
    path = ck.save_checkpoint(tmp_path, "last", w, meta, {"epoch": 1, "model": w})
    tensors, got = ck.read_weights(path)
    assert got == meta and torch.equal(tensors["a.weight"], w["a.weight"])
    state = ck.read_state(tmp_path / "last.state.pt")
    assert state["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors", "last.state.pt"]  # no temp files left


def test_shared_tensors_are_saved(tmp_path):
    t = torch.randn(4, 4)
    ck.save_weights(tmp_path / "w.safetensors", {"x": t, "y": t, "z": t.t()}, {})
    tensors, _ = ck.read_weights(tmp_path / "w.safetensors")
    assert torch.equal(tensors["z"], t.t())


def test_malicious_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.state.pt"
    torch.save({"model": _weights(), "payload": Evil()}, bad)
    with pytest.raises(CheckpointError) as err:
        ck.read_state(bad)
    assert str(bad) in str(err.value) and "refused" in str(err.value)
    with pytest.raises(CheckpointError, match="refused"):
        ck.read_any_weights(bad)
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_corrupt_files_are_clear_errors(tmp_path):
    trunc = tmp_path / "t.state.pt"
    torch.save({"x": torch.randn(100)}, trunc)
    trunc.write_bytes(trunc.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=r"t\.state\.pt"):
        ck.read_state(trunc)
    junk = tmp_path / "j.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match=r"j\.safetensors"):
        ck.read_weights(junk)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_dir_keeps_previous(tmp_path):
    ck.save_checkpoint(tmp_path, "last", _weights(), {"v": 1}, {"epoch": 1})
    before = (tmp_path / "last.safetensors").read_bytes()
    tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(WriteError, match="previous file"):
            ck.save_checkpoint(tmp_path, "last", _weights(), {"v": 2}, {"epoch": 2})
    finally:
        tmp_path.chmod(stat.S_IRWXU)
    assert (tmp_path / "last.safetensors").read_bytes() == before


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    # The write mechanics are tests/test_atomic.py's; here: a checkpoint save goes through them.
    ck.save_state(tmp_path / "last.state.pt", {"epoch": 1})

    def erofs(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", erofs)
    with pytest.raises(WriteError, match=r"last\.state\.pt.*Read-only file system.*previous file"):
        ck.save_state(tmp_path / "last.state.pt", {"epoch": 2})
    monkeypatch.undo()
    assert ck.read_state(tmp_path / "last.state.pt") == {"epoch": 1}


def test_init_from_weights_matches_by_name_and_shape(tmp_path):
    model = torch.nn.Sequential()
    model.add_module("backbone", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    model.add_module("head", torch.nn.Conv2d(4, 2, 1))
    backbone_file = tmp_path / "bb.safetensors"
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    ck.save_weights(backbone_file, ref.state_dict(), {})
    msg = ck.init_from_weights(model, backbone_file)
    assert "backbone" in msg and torch.equal(model.backbone[0].weight, ref[0].weight)
    other = tmp_path / "other.safetensors"
    ck.save_weights(other, {"nothing.weight": torch.zeros(1)}, {})
    with pytest.raises(CheckpointError, match="no tensor matches"):
        ck.init_from_weights(model, other)


def test_meta_is_json(tmp_path):
    ck.save_weights(tmp_path / "w.safetensors", _weights(), {"class_names": ["x"]})
    with safe_open(tmp_path / "w.safetensors", "pt") as fh:
        assert json.loads(fh.metadata()["cspwrc"]) == {"class_names": ["x"]}


def test_backbone_only_file_initialises_detector_backbone(tmp_path):
    """--weights with a timm classification checkpoint: the backbone's tensors load (stages.N ~ stages_N)."""
    classifier = timm.create_model("cspwrc_n", num_classes=10)
    path = tmp_path / "cspwrc_n_imagenet.safetensors"
    ck.save_weights(path, classifier.state_dict(), {})
    detector = build_detector(backbone="cspwrc_n", num_classes=3)
    msg = ck.init_from_weights(detector, path)
    assert msg.startswith("initialised backbone")
    bb = detector.backbone.state_dict()
    src = classifier.state_dict()
    loaded = int(msg.split(": ")[1].split("/")[0])
    assert loaded == len(bb)  # every backbone tensor came from the file
    by_norm = {feature_key(k): v for k, v in src.items()}
    for name, value in bb.items():
        assert torch.equal(value, by_norm[feature_key(name)]), name


def test_load_detector_needs_cspwrc_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    ck.save_weights(path, _weights(), {"model": "cspwrc_n"})
    with pytest.raises(CheckpointError, match="or 'num_classes' in the 'cspwrc' metadata"):
        ck.load_detector(path)
    ck.save_weights(path, _weights(), {"model": {"backbone": {"name": "cspwrc_n"}, "bogus": 1}, "num_classes": 2})
    with pytest.raises(CheckpointError, match=r"cannot build the detector.*unknown key 'bogus'"):
        ck.load_detector(path)
    # An old file's flat options go through the one translation: an unknown one is named the same way.
    ck.save_weights(path, _weights(), {"model": "cspwrc_n", "num_classes": 2, "options": {"bogus_option": 1}})
    with pytest.raises(CheckpointError, match=r"cannot build the detector.*bogus_option"):
        ck.load_detector(path)
