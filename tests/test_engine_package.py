"""The package's top level: `engine.load_model` (DESIGN §3) exists and `import engine`
stays light (the model code loads only when asked for)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_engine_does_not_load_the_models():
    code = (
        "import sys, engine; "
        "assert 'engine.models' not in sys.modules, 'engine.models imported eagerly'; "
        "f = engine.load_model; "
        "assert 'engine.models' in sys.modules; "
        "from engine.models import load_model; assert f is load_model"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_model_at_the_top_level():
    import engine
    from engine import load_model
    from engine.models import GDObjectModel

    assert "load_model" in engine.__all__
    model = load_model("object-tiny", device="cpu", pretrained=False)
    assert isinstance(model, GDObjectModel) and not model.training
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        engine.nope  # noqa: B018
