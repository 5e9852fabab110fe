"""Shared by the evaluation tests: an app holding only `h2aseg evaluate`."""

from __future__ import annotations

import pytest
import typer

from h2aseg.cli.evaluate import register


@pytest.fixture
def app() -> typer.Typer:
    a = typer.Typer(pretty_exceptions_enable=False)
    register(a)
    return a
