"""The project's error family: a problem with what the user gave (files, configuration, run folders,
checkpoints), as opposed to a bug. The CLI prints these as one line; anything else keeps its traceback.

Each subclass also derives from ``ValueError``, so code that caught ``ValueError`` keeps working.
"""

from __future__ import annotations


class H2ASegError(ValueError):
    """Base of every error that names a user's input and what is wrong with it."""


class InputError(H2ASegError):
    """An input file or folder (image, layout, split, DICOM, prediction) is missing or unusable."""
