"""Scene settings Cycles needs to render splats right, applied visibly.

A splat object is thousands of overlapping, partly transparent ellipsoids (display.py):
every ray crosses many transparent layers. Cycles stops after
`cycles.transparent_max_bounces` of them (8 by default), so a dense splat renders dark
and smeared, and with `cycles.min_transparent_bounces` at its default 0 Russian roulette
ends transparent paths at random, which at a few samples is noise the engine's render does
not have (bench/blender_display_fidelity.py measures both; README "Blender add-on").

The add-on raises both, never lowers them, whenever it makes a splat object (Reconstruct,
Reconstruct Object, Import), and says so in the operator's report; the panel warns while
they are below, with a button that sets them (`GD_OT_splat_render_settings`).
"""

from __future__ import annotations

from typing import Any

SPLAT_TRANSPARENT_BOUNCES = 128
"""Cycles' Light Paths > Max Bounces > Transparent needed by the splats."""
SPLAT_MIN_TRANSPARENT_BOUNCES = 64
"""Light Paths > Min Bounces... (Cycles' `min_transparent_bounces`): no Russian roulette
through the first this many transparent layers."""

_SETTINGS = (
    ("transparent_max_bounces", SPLAT_TRANSPARENT_BOUNCES, "Transparent Max Bounces"),
    ("min_transparent_bounces", SPLAT_MIN_TRANSPARENT_BOUNCES, "Min Transparent Bounces"),
)


def _cycles(scene: Any) -> Any | None:
    return getattr(scene, "cycles", None)


def missing_splat_render_settings(scene: Any) -> list[str]:
    """Human-readable settings below what the splats need (empty: all good)."""
    cycles = _cycles(scene)
    if cycles is None:
        return []
    return [f"{label} {int(getattr(cycles, attr))} (needs {value})"
            for attr, value, label in _SETTINGS
            if hasattr(cycles, attr) and int(getattr(cycles, attr)) < value]  # fmt: skip


def ensure_splat_render_settings(scene: Any) -> str:
    """Raise the Cycles settings splats need (never lower them); returns a sentence saying
    what changed, or "" when nothing had to."""
    cycles = _cycles(scene)
    if cycles is None:
        return ""
    changed = []
    for attr, value, label in _SETTINGS:
        if hasattr(cycles, attr) and int(getattr(cycles, attr)) < value:
            changed.append(f"{label} {int(getattr(cycles, attr))} -> {value}")
            setattr(cycles, attr, value)
    if not changed:
        return ""
    return "Cycles Light Paths set for splats: " + ", ".join(changed)


CLEAN_RENDER_TIPS = (
    "Clean splat renders: Cycles with Light Paths >",
    f"Transparent bounces >= {SPLAT_TRANSPARENT_BOUNCES} (min {SPLAT_MIN_TRANSPARENT_BOUNCES});",
    "View Transform Standard for the engine's colours",
)
