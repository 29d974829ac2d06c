"""Throw-away certificate authorities and certificates for TLS tests, made with the
``openssl`` command (Debian package openssl, installed by ``make install``)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Authority", "Pair"]

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pair:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


class Authority:
    """A self-signed CA in ``directory`` that issues server and client certificates."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self.cert = directory / f"{name}.pem"
        self._key = directory / f"{name}.key"
        _openssl(
            "req", "-x509", *_KEY, "-keyout", str(self._key), "-out", str(self.cert),
            "-days", "2", "-subj", f"/CN={name}",
        )  # fmt: skip

    def issue(self, name: str, *, client: bool = False) -> Pair:
        """A certificate for ``localhost`` / 127.0.0.1 (server) or a client certificate."""
        key = self.directory / f"{name}.key"
        csr = self.directory / f"{name}.csr"
        cert = self.directory / f"{name}.pem"
        extensions = self.directory / f"{name}.ext"
        usage = "clientAuth" if client else "serverAuth"
        extensions.write_text(
            "basicConstraints=CA:FALSE\n"
            f"extendedKeyUsage={usage}\n"
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        )
        _openssl("req", *_KEY, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self._key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions),
        )  # fmt: skip
        return Pair(cert, key)


def _openssl(*args: str) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is not installed: run `make install`")
    subprocess.run([binary, *args], check=True, capture_output=True, timeout=30)
