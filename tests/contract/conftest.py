"""Contract tests: one set of scenarios for the test doubles and for real agents.

Our Consul and Nomad code is written against the agents' documented HTTP APIs, and
every other test runs it against the doubles in ``tests/doubles`` (doubles, not the
agents). The tests in this directory use nothing but those APIs (no double-side
controls), so the same scenarios also run against real agents, which is how a
difference between a double and the agent it stands in for shows up:

- ``VOXMESH_CONTRACT_CONSUL=http://127.0.0.1:8500``: a Consul 1.16+ agent, for
  instance ``consul agent -dev``, on this host (its gRPC checks probe servers the
  tests start on 127.0.0.1).
- ``VOXMESH_CONTRACT_NOMAD=http://127.0.0.1:4646``: a Nomad 1.6+ agent in dev mode
  (``nomad agent -dev``: server and client in one, ``raw_exec`` enabled, node pool
  ``default``), on a Linux host with ``/bin/sleep``.

Unset (CI), each runs against its double with the agent timers shortened the way
the agents' own tests shorten them. ``make contract`` runs only this directory. An
address that does not answer fails the run; nothing is skipped. Against a real
agent every name a test creates carries a random suffix and is removed afterwards.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from tests.doubles.consul_double import ConsulDouble
from tests.doubles.nomad_double import NomadDouble

CONSUL_ENV = "VOXMESH_CONTRACT_CONSUL"
NOMAD_ENV = "VOXMESH_CONTRACT_NOMAD"


@dataclass(frozen=True)
class Agent:
    """Where the agent (or its double) answers, and the timings a scenario can expect."""

    url: str
    real: bool
    within: float
    """Seconds to allow for a change the agent makes on its own (a probe, a placement)."""
    check_interval: str = "1s"
    """gRPC check interval (Consul raises anything shorter than 1 s to 1 s)."""
    session_ttl: float = 10.0
    """Session TTL for leader locks (Consul's ``session_ttl_min`` is 10 s)."""

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parsed = urlsplit(self.url)
        return parsed.port or (443 if parsed.scheme == "https" else 80)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme or "http"

    @property
    def kind(self) -> str:
        return "agent" if self.real else "double"


def unique(prefix: str) -> str:
    """A name no earlier run left behind on a shared agent."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _reachable(url: str, probe: str, env: str) -> str:
    try:
        with urllib.request.urlopen(url.rstrip("/") + probe, timeout=5):
            pass
    except (urllib.error.URLError, OSError) as err:
        raise pytest.UsageError(f"{env}={url} does not answer {probe}: {err}") from err
    return url.rstrip("/")


@pytest.fixture
def consul_agent() -> Iterator[Agent]:
    """The Consul agent named by ``VOXMESH_CONTRACT_CONSUL``, else a fresh Consul double."""
    url = os.environ.get(CONSUL_ENV, "").strip()
    if url:
        yield Agent(_reachable(url, "/v1/agent/self", CONSUL_ENV), real=True, within=60.0)
        return
    double = ConsulDouble(
        min_check_interval=0.05, reap_interval=0.05, deregister_min=0.3, session_ttl_min=1.0
    )
    double.start()
    try:
        yield Agent(double.url, real=False, within=10.0, check_interval="100ms", session_ttl=1.0)
    finally:
        double.stop()


@pytest.fixture
def nomad_agent() -> Iterator[Agent]:
    """The Nomad agent named by ``VOXMESH_CONTRACT_NOMAD``, else a fresh Nomad double.

    The double gets one ready client node in the ``default`` node pool and ``dc1``,
    without GPUs, as ``nomad agent -dev`` has; allocations on it run 0.2 s after
    placement.
    """
    url = os.environ.get(NOMAD_ENV, "").strip()
    if url:
        yield Agent(_reachable(url, "/v1/agent/self", NOMAD_ENV), real=True, within=120.0)
        return
    with NomadDouble(start_delay_s=0.2) as double:
        double.add_node("contract-dev", pool="default", gpus=0)
        yield Agent(double.url, real=False, within=20.0)
