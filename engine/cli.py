"""`gd` command line: one sub-command per job, each defined next to the code it drives.

Sub-command modules expose `register(subparsers)`, which adds a parser whose
`func` attribute takes the parsed namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules providing `register(subparsers)`, imported when the parser is built. They keep
# their heavy imports (bpy, numba) inside the code that runs, so building the parser loads
# only torch (through `engine`), never Blender or the numba kernels.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "engine.render.cli",
    "engine.demo",
    "engine.data.cli",
    "engine.io.cli",
    "engine.evaluate_cli",
    "engine.train_cli",
    "engine.reconstruct_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gd", description="Gaussian splat engine")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input is reported as one clear line, not a traceback.
        print(f"gd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
