"""Fixtures of the viewer tests: the tiny cohort (:mod:`viewer_fixtures`) and a server on a free port."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from viewer_fixtures import ViewerCohort, write_viewer_cohort

from h2aseg.viewer.server import ViewerServer, make_server


@pytest.fixture(scope="session")
def viewer_cohort(tmp_path_factory: pytest.TempPathFactory) -> ViewerCohort:
    return write_viewer_cohort(tmp_path_factory.mktemp("viewer"))


@pytest.fixture
def served(viewer_cohort: ViewerCohort) -> Iterator[ViewerServer]:
    server = make_server(viewer_cohort.pred, viewer_cohort.data, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
