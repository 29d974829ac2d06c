"""Test-wide set-up."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from services.router.settings import DEFAULT_DATAPLANE_BIN
from tests.data_paths import DATA_PATH, DATA_PATHS
from voxmesh.rpc import aio_compat

aio_compat.install()


@pytest.fixture(params=DATA_PATHS)
def router_data_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a router test once per data path: the routers it starts relay with the
    Python one, then with the native one (``dataplane/``, built by ``make dataplane``,
    which ``make test`` runs)."""
    path: str = request.param
    if path == "native" and not os.access(DEFAULT_DATAPLANE_BIN, os.X_OK):
        pytest.skip(f"{DEFAULT_DATAPLANE_BIN} is not built (make dataplane)")
    token = DATA_PATH.set(path)
    try:
        yield path
    finally:
        DATA_PATH.reset(token)
