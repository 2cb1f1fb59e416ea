"""One Blender worker process: `python -m engine.data.worker OUT --seed S ...`.

Reads object (with `--kind scenes`: scene) indices from stdin, one per line, renders each,
and answers on stdout with one line per item: `GD-DONE <index> <seconds>` or
`GD-FAIL <index> <message>`. Blender prints its own progress to file descriptor 1, so the
protocol gets a private duplicate of stdout and everything else written to fd 1 goes to
stderr (the parent's log file).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

DONE, FAIL = "GD-DONE", "GD-FAIL"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.data.worker")
    p.add_argument("out")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--views-in", type=int, default=4)
    p.add_argument("--views-target", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--no-denoise", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rig", default="ring")
    p.add_argument("--kind", choices=("props", "scenes"), default="props")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Blender's chatter on fd 1 -> stderr
    sys.stdout = sys.stderr
    from .procedural.scene import RenderSettings  # imports bpy

    settings = RenderSettings(args.res, args.samples, not args.no_denoise, args.threads)
    if args.kind == "scenes":
        from .scene_generator import SceneGenerator

        gen: Any = SceneGenerator(args.out, args.seed, settings, args.views_target)
    else:
        from .generator import Generator

        gen = Generator(
            args.out, args.seed, settings, args.views_in, args.views_target, input_rig=args.rig
        )
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        index = int(line)
        try:
            done = gen.generate(index)
            protocol.write(f"{DONE} {index} {done.get('seconds', 0.0)}\n")
        except Exception as exc:  # one broken prop must not stop the run
            traceback.print_exc()
            message = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            protocol.write(f"{FAIL} {index} {message}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
