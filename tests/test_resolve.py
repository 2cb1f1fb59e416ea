"""engine.resolve.resolve_model: a name or a weights path to a model, one error for
missing weights (the CLI, the add-on and the benches all load through it)."""

from __future__ import annotations

import pytest

import engine.weights
from engine.resolve import WeightsNotFoundError, resolve_model
from engine.weights import weights_in_folder


def test_a_preset_name_with_random_weights():
    model = resolve_model("object-tiny", "cpu", pretrained=False)
    assert model.config.name == "object-tiny"
    assert not model.training


def test_unknown_name_says_so_before_looking_for_files(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.weights, "ASSETS", tmp_path / "no_assets")
    with pytest.raises(ValueError, match="unknown model 'object-huge'"):
        resolve_model("object-huge", "cpu")


def test_missing_shipped_weights_name_the_file_and_the_callers_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.weights, "ASSETS", tmp_path / "no_assets")
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_model("object-tiny", "cpu", hint="pass --model PATH")
    message = str(err.value)
    assert "'object-tiny'" in message and "object-tiny.safetensors" in message
    assert message.endswith("; pass --model PATH") and "\n" not in message
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_model("object-tiny", "cpu", hint=None)
    assert str(err.value).endswith("are missing")


@pytest.mark.parametrize("how", ["model", "weights", "folder"])
def test_missing_files_name_the_path(tmp_path, how):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises((WeightsNotFoundError, ValueError), match="nowhere|found 0"):
        if how == "model":
            resolve_model(missing, "cpu")
        elif how == "weights":
            resolve_model("object-tiny", "cpu", weights=missing)
        else:
            (tmp_path / "nowhere").mkdir()
            resolve_model(tmp_path / "nowhere", "cpu")
    assert issubclass(WeightsNotFoundError, FileNotFoundError)  # CLI: one line, exit 2


def test_weights_in_folder(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.safetensors"):
        (run / "checkpoint" / name).write_bytes(b"")
    assert weights_in_folder(run) == run / "checkpoint" / "model.safetensors"
    assert weights_in_folder(run / "checkpoint") == run / "checkpoint" / "model.safetensors"
    one = tmp_path / "one"
    one.mkdir()
    (one / "object-small.safetensors").write_bytes(b"")
    assert weights_in_folder(one) == one / "object-small.safetensors"
    (one / "other.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="found 2"):
        weights_in_folder(one)
