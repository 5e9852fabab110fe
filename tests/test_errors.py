"""Every error class the project defines for a user's input belongs to one family (h2aseg.errors)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import h2aseg
from h2aseg.errors import H2ASegError, InputError


def _project_error_classes() -> list[type]:
    found = []
    for mod in pkgutil.walk_packages(h2aseg.__path__, "h2aseg."):
        if mod.name.endswith("__main__"):
            continue
        module = importlib.import_module(mod.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if obj.__module__ == mod.name and issubclass(obj, Exception) and obj.__name__.endswith("Error"):
                found.append(obj)
    return found


def test_every_project_error_is_an_h2aseg_error() -> None:
    classes = _project_error_classes()
    names = {c.__name__ for c in classes}
    assert {"ConfigError", "ImageError", "LayoutError", "CheckpointError", "RunDirError"} <= names
    outside = [c.__qualname__ for c in classes if not issubclass(c, H2ASegError)]
    assert not outside, f"error classes outside the H2ASegError family: {outside}"


def test_input_errors_and_compatibility() -> None:
    from h2aseg.data.dicom_series import DicomError
    from h2aseg.data.io import ImageError

    assert issubclass(DicomError, ImageError) and issubclass(ImageError, InputError)
    assert issubclass(H2ASegError, ValueError)  # code that caught ValueError keeps working
