"""The Consul agent address every service is given: parsed one way, refused at start-up
when it cannot be what was meant (never read as the local agent)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from services.autoscaler.app import make_lock, make_source
from services.autoscaler.settings import AutoscalerSettings
from services.router.app import discovery_watchers
from services.router.settings import RouterSettings
from voxmesh.asr.app import make_registrar
from voxmesh.asr.settings import AsrSettings
from voxmesh.discovery.consul import PyConsulApi
from voxmesh.discovery.consul_address import ConsulAddress, parse_consul_address
from voxmesh.errors import SettingsError
from voxmesh.leader import PyConsulSessionApi


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.5:8500", ConsulAddress("10.0.0.5", 8500, "http")),  # CONSUL_HTTP_ADDR's form
        ("consul.service.consul:8500", ConsulAddress("consul.service.consul", 8500, "http")),
        ("consul.service.consul", ConsulAddress("consul.service.consul", 8500, "http")),
        ("http://10.0.0.5:8500", ConsulAddress("10.0.0.5", 8500, "http")),
        ("http://10.0.0.5:8600/", ConsulAddress("10.0.0.5", 8600, "http")),
        ("HTTPS://Consul.example:8501", ConsulAddress("consul.example", 8501, "https")),
        ("https://consul.example", ConsulAddress("consul.example", 8500, "https")),
        ("[fd00::5]:8500", ConsulAddress("[fd00::5]", 8500, "http")),
        ("http://[::1]", ConsulAddress("[::1]", 8500, "http")),
        (" 127.0.0.1:8500 ", ConsulAddress("127.0.0.1", 8500, "http")),
    ],
)
def test_an_address_with_or_without_a_scheme_names_its_agent(
    value: str, expected: ConsulAddress
) -> None:
    assert parse_consul_address("consul_addr", value) == expected


def test_the_url_brackets_an_ipv6_host() -> None:
    assert parse_consul_address("consul_addr", "[fd00::5]").url == "http://[fd00::5]:8500"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "expected a Consul agent address"),
        ("   ", "expected a Consul agent address"),
        ("http://", "names no host"),
        ("http://:8500", "names no host"),
        (":8500", "names no host"),
        ("consul://10.0.0.5:8500", "scheme 'consul' is not http or https"),
        ("unix:///var/run/consul.sock", "scheme 'unix' is not http or https"),
        ("10.0.0.5:85OO", "the port must be a number from 1 to 65535"),
        ("10.0.0.5:70000", "the port must be a number from 1 to 65535"),
        ("10.0.0.5:0", "the port must be a number from 1 to 65535"),
        ("fd00::5", "an IPv6 host goes in brackets"),
        ("http://token@10.0.0.5:8500", "credentials in the address are not supported"),
        ("http://10.0.0.5:8500/consul", "a path, query or fragment is not supported"),
        ("http://10.0.0.5:8500?dc=eu", "a path, query or fragment is not supported"),
    ],
)
def test_an_address_that_cannot_be_meant_is_refused_naming_the_setting(
    value: str, why: str
) -> None:
    with pytest.raises(SettingsError) as raised:
        parse_consul_address("consul_address", value)
    message = str(raised.value)
    assert message.startswith(f"setting consul_address={value!r}: "), message
    assert why in message


@pytest.fixture
def connected(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int, str]]:
    """Records the agent each Consul client is built for (and builds it: no socket yet)."""
    calls: list[tuple[str, str, int, str]] = []

    def recording(kind: str, connect: Any) -> Any:
        def connect_and_record(host: str, port: int, scheme: str, **kw: Any) -> Any:
            calls.append((kind, host, port, scheme))
            return connect(host, port, scheme, **kw)

        return connect_and_record

    monkeypatch.setattr(PyConsulApi, "connect", recording("discovery", PyConsulApi.connect))
    monkeypatch.setattr(
        PyConsulSessionApi, "connect", recording("lock", PyConsulSessionApi.connect)
    )
    return calls


def test_every_service_talks_to_the_agent_its_setting_names(
    connected: list[tuple[str, str, int, str]],
) -> None:
    address = "10.0.0.5:8500"
    make_registrar(AsrSettings(discovery="consul", consul_addr=address, advertise_host="10.0.0.9"))
    discovery_watchers(RouterSettings(discovery="consul", consul_address=address))
    autoscaler = AutoscalerSettings(discovery="consul", consul_addr=address)
    make_source(autoscaler, time.monotonic)
    make_lock(autoscaler)
    agent = ("10.0.0.5", 8500, "http")
    assert connected == [("discovery", *agent)] * 3 + [("lock", *agent)]


def test_every_service_refuses_an_address_it_cannot_use(
    connected: list[tuple[str, str, int, str]],
) -> None:
    bad = "consul://10.0.0.5:8500"
    settings = AutoscalerSettings(discovery="consul", consul_addr=bad)
    starts: dict[str, list[Callable[[], object]]] = {
        "consul_addr": [
            lambda: make_registrar(
                AsrSettings(discovery="consul", consul_addr=bad, advertise_host="10.0.0.9")
            ),
            lambda: make_source(settings, time.monotonic),
            lambda: make_lock(settings),
        ],
        "consul_address": [
            lambda: discovery_watchers(RouterSettings(discovery="consul", consul_address=bad))
        ],
    }
    for name, calls in starts.items():
        for start in calls:
            with pytest.raises(SettingsError, match=re.escape(f"setting {name}={bad!r}")):
                start()
    assert connected == []
