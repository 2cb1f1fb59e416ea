"""The one error type of `engine.refine`."""


class RefineError(ValueError):
    """Bad arguments to `refine` (budget, views, holdout, selection), or a time budget too
    small for one step."""
