"""Generative-densification Gaussian splatting engine (PyTorch, no bpy).

    import engine
    model = engine.load_model("object-small", device="auto")   # shipped weights, offline
    rec = model.reconstruct(images, cameras)                    # rec.coarse, rec.gaussians
    engine.io.save(rec.gaussians, "prop.ply")

`import engine` stays light: the model code loads when `load_model` is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .gaussians import Gaussians, GaussiansError

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `load_model` is lazy
    from .models import load_model

__all__ = ["Gaussians", "GaussiansError", "load_model"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `import engine` stays light (no model code, no safetensors) until a model is asked
    # for; the add-on and the CLI import the package long before they load a network.
    if name == "load_model":
        from .models import load_model

        return load_model
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
