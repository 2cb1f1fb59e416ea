"""Constants of the 3DGS compositing rule, shared by every rasteriser backend.

Kept apart from the kernels so the portable torch backend imports without numba (the
Blender add-on treats numba as optional).
"""

from __future__ import annotations

# A Gaussian adds to a pixel only where its alpha reaches 1/255; alpha is capped at 0.99.
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
# A pixel stops compositing once its transmittance would fall below this.
T_MIN = 1e-4
# Binning pads each box by this many pixels so float rounding in the box never
# drops a pixel the kernel's own alpha test would keep; extra pixels cost a test each.
BOX_MARGIN = 1e-3
