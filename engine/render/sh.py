"""The SH basis the renderer evaluates colours with; it lives in `engine.sh` (the renderer,
`transforms` and the file formats share it) and is re-exported here for the renderer."""

from ..sh import C0, C1, C2, C3, eval_sh_colors, sh_basis

__all__ = ["C0", "C1", "C2", "C3", "eval_sh_colors", "sh_basis"]
