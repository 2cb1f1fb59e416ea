"""`gd` command line: one sub-command per job, each defined next to the code it drives.

Sub-command modules expose `register(subparsers)`, which adds a parser whose
`func` attribute takes the parsed namespace and returns an exit code.

Bad input (ValueError, FileNotFoundError) is one line on stderr and exit status 2.
Ctrl-C (SIGINT) and SIGTERM are one line and exit status 130 / 143 (128 + the signal,
as a shell reports a killed command): SIGTERM is turned into an exception in the main
thread so that, as for Ctrl-C, every temporary file of `engine.atomic` is removed and
existing outputs stay as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
from types import FrameType
from typing import Any

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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread. A BaseException, like KeyboardInterrupt, so
    `except Exception` blocks let it through while `finally` blocks and clean-ups run."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def _set_handlers(handlers: dict[signal.Signals, Any]) -> None:
    """Install signal handlers where possible: only the main thread may (the add-on's
    worker threads call no CLI, but scripts might), and a handler set from C reads as None."""
    for sig, handler in handlers.items():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(sig, handler)


def _stop(command: str, what: str, code: int) -> int:
    # A second signal while the one-line message is printed must not become a traceback.
    _set_handlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN})
    print(f"{command}: {what}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    command = "gd"
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _set_handlers({signal.SIGTERM: _raise_terminated})
        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"gd {args.command}"
        try:
            return int(args.func(args) or 0)
        except (ValueError, FileNotFoundError) as exc:
            # Bad input is reported as one clear line, not a traceback.
            print(f"{command}: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        return _stop(command, "interrupted", 128 + signal.SIGINT)
    except Terminated:
        return _stop(command, "terminated", 128 + signal.SIGTERM)
    finally:
        # Callers in the same process (tests, scripts) get their own handlers back.
        _set_handlers(previous)


if __name__ == "__main__":
    sys.exit(main())
