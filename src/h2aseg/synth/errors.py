"""The phantom's one exception type."""

from __future__ import annotations


class PhantomError(ValueError):
    """Invalid phantom parameters or output folder; the message says which."""
