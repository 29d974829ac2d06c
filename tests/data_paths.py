"""Which data path the routers of a test relay with.

The ``router_data_path`` fixture (``tests/conftest.py``) runs a router test once
with each: the Python relay and the native one (``dataplane/``). Tests read
:data:`DATA_PATH` where they start a router (``tests.integration.router_harness.mesh``
and the routers the end-to-end tests start as processes).
"""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["DATA_PATH", "DATA_PATHS"]

DATA_PATHS = ("python", "native")
DATA_PATH: ContextVar[str] = ContextVar("router_data_path", default="python")
"""The data path of the routers a test starts, unless it names one."""
