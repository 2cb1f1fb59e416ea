"""The engine without numba (optional in the Blender add-on): `import engine`, `engine.io`,
`engine.load_model`, the torch rasteriser and `render(backend="auto")` all work, and
`backend="numba"` is a clear RenderError. Each case runs in a fresh Python whose numba
import is blocked, the two ways it can be missing: a `sys.meta_path` finder that refuses
it (not installed) and `sys.modules["numba"] = None` (import halted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCKERS = {
    "meta_path": """
import importlib.abc, sys

class NoNumba(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numba" or name.startswith(("numba.", "llvmlite")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoNumba())
""",
    "sys_modules": """
import sys
sys.modules["numba"] = None
""",
}

SCRIPT = """
import sys
import torch

import engine
import engine.io
from engine.cameras import Cameras
from engine.gaussians import Gaussians
from engine.render import RenderError, numba_available, render

assert not numba_available()
gen = torch.Generator().manual_seed(0)
n = 64
quats = torch.randn(n, 4, generator=gen)
g = Gaussians(
    torch.randn(n, 3, generator=gen) * 0.3,
    torch.full((n, 3), -3.0),
    quats / quats.norm(dim=-1, keepdim=True),
    torch.full((n,), 2.0),
    torch.rand(n, 1, 3, generator=gen) - 0.5,
)
eyes = torch.tensor([[3.0, 0.0, 1.0], [0.0, 3.0, 1.0]])
cams = Cameras.look_at(eyes, torch.zeros(3), fov_x_deg=40.0, width=48, height=48)
for backend in ("auto", "torch"):
    with torch.no_grad():
        out = render(g, cams, background=torch.ones(3), backend=backend)
    assert out.backend == "torch", out.backend
    assert out.colors.shape == (2, 48, 48, 3) and bool(torch.isfinite(out.colors).all())
    assert float(out.alphas.max()) > 0.5  # the Gaussians are drawn, not just background
try:
    render(g, cams, backend="numba")
except RenderError as err:
    assert "pip install numba" in str(err), err
else:
    raise AssertionError("backend='numba' rendered without numba")

model = engine.load_model("object-tiny", pretrained=False, device="cpu")
if "--reconstruct" in sys.argv:
    # The whole object model: densification renders (gradient mask) through torch too.
    images = torch.rand(2, 64, 64, 3, generator=gen)
    views = Cameras.look_at(eyes, torch.zeros(3), fov_x_deg=40.0, width=64, height=64)
    rec = model.reconstruct(images, views, budget=16)
    assert len(rec.gaussians) > 0
assert sys.modules.get("numba") is None, "numba was imported"
print("OK")
"""


@pytest.mark.parametrize("blocker", sorted(BLOCKERS))
def test_engine_renders_and_reconstructs_without_numba(blocker: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # One blocker runs a whole reconstruction too (12 s on one core); both render.
    extra = ["--reconstruct"] if blocker == "meta_path" else []
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKERS[blocker] + SCRIPT, *extra],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
