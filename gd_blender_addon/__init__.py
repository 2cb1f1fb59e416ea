"""Blender add-on for generative-densification splats (a Blender 4.2+ extension).

Reconstruct a prop as Gaussian splats from selected cameras (rendered) or posed photos,
densify a selected region, export to splat formats. The heavy work is `engine` (PyTorch),
imported lazily so the add-on registers in a Blender without PyTorch; preferences offer to
install it. See README.md ("Blender add-on") and DESIGN.md §3.

Built as an extension (`make extension`), this package is the extension's root and the
engine ships in `_vendor/engine` (see dependencies.py for why and how it is imported).
"""

from __future__ import annotations

from . import dependencies, operators, panels, preferences, properties

# Registration order: properties before the operators and panels that read them.
_modules = (preferences, properties, operators, panels)


def register() -> None:
    dependencies.setup_paths()
    for module in _modules:
        module.register()


def unregister() -> None:
    for module in reversed(_modules):
        module.unregister()
