"""The add-on's one error type for problems the user can fix (imported by every job module,
so it lives apart from operators.py)."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; reported as is."""
