"""The Consul agent address a service is given: one parser for every service.

The setting takes the forms of Consul's own ``CONSUL_HTTP_ADDR``: ``host:port``
(plain HTTP, the usual form), ``http://host:port`` or ``https://host:port``; an
IPv6 host is written in brackets (``[fd00::5]:8500``). Without a port the agent's
HTTP port, 8500, is used whatever the scheme, as py-consul does (Consul's Go client
would fall back to 80 or 443, which no agent listens on by default). Anything else
(another scheme, no host, a bad port, a path, a query, credentials) is refused at
start-up with a :class:`~voxmesh.errors.SettingsError` naming the setting: read
loosely, such an address used to send a service to the local agent or to fail for
ever as "Consul unavailable".

This module imports no Consul client, so a service checks its setting before it
loads the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from voxmesh.errors import SettingsError

__all__ = ["DEFAULT_CONSUL_PORT", "ConsulAddress", "parse_consul_address"]

DEFAULT_CONSUL_PORT = 8500
"""The agent's HTTP port, used when the address names none."""
_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class ConsulAddress:
    """Where a Consul agent answers HTTP: what a Consul client is built from."""

    host: str
    """The host name or IP address; an IPv6 address is in brackets, as in a URL."""
    port: int
    """The TCP port (``DEFAULT_CONSUL_PORT`` when the setting names none)."""
    scheme: str
    """``http`` or ``https``."""

    @property
    def url(self) -> str:
        """``scheme://host:port``."""
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_consul_address(setting: str, value: str) -> ConsulAddress:
    """The agent address in ``value``, the value of the setting named ``setting``.

    Raises :class:`SettingsError` (``setting <setting>=<value>: <why>``) for an
    address that names no host or is not plain ``[http[s]://]host[:port]``.
    """

    def refuse(why: str) -> SettingsError:
        return SettingsError(f"setting {setting}={value!r}: {why}")

    text = value.strip()
    if not text:
        raise refuse("expected a Consul agent address such as 10.0.0.5:8500")
    url = urlsplit(text if "://" in text else f"http://{text}")
    scheme = url.scheme.lower()
    if scheme not in _SCHEMES:
        raise refuse(f"scheme {url.scheme!r} is not http or https")
    if not url.hostname:
        raise refuse("names no host; expected [http[s]://]host[:port], e.g. 10.0.0.5:8500")
    try:
        port = url.port
    except ValueError:
        port = 0
    if port == 0:
        raise refuse("the port must be a number from 1 to 65535 (an IPv6 host goes in brackets)")
    if url.username is not None or url.password is not None:
        raise refuse("credentials in the address are not supported (use CONSUL_HTTP_TOKEN)")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise refuse("a path, query or fragment is not supported, only [http[s]://]host[:port]")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return ConsulAddress(host, port or DEFAULT_CONSUL_PORT, scheme)
