"""``host:port`` strings, IPv6 literals included."""

from __future__ import annotations

__all__ = ["host_port"]


def host_port(host: str, port: int) -> str:
    """``host:port`` with an IPv6 literal in brackets (``[::1]:50051``), as gRPC targets,
    listen addresses and Prometheus targets need."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"
