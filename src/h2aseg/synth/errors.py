"""The phantom's one exception type."""

from __future__ import annotations

from h2aseg.errors import H2ASegError


class PhantomError(H2ASegError):
    """Invalid phantom parameters or output folder; the message says which."""
