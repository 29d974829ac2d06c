"""TLS for a public gRPC endpoint: server credentials that follow certificate rotation,
and the matching client credentials.

An operator hands a service three PEM files: the certificate chain, its private
key and, for mutual TLS, the CA that client certificates must chain to. They
are checked at start-up (a missing file, a key that does not match the
certificate: :class:`~voxmesh.errors.SettingsError`, so the process exits with
one line naming the setting). While the server runs, every new TLS handshake
looks at the files' modification times; when they changed (cert-manager, a
Nomad ``template`` rendering from Vault, ``certbot renew``), the new pair is
checked and used for new connections, and connections already open keep
theirs. A half-written or mismatched pair is refused with a warning and the
previous one stays in use, so a botched rotation cannot take the endpoint down.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from voxmesh.errors import SettingsError

__all__ = ["ClientTls", "ServerTls", "server_credentials"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerTls:
    """The PEM files of a TLS endpoint."""

    cert_file: Path
    """Certificate chain, leaf first."""
    key_file: Path
    """Private key of the leaf certificate."""
    client_ca_file: Path | None = None
    """CA bundle client certificates must chain to; set, clients must present one (mTLS)."""

    @classmethod
    def from_settings(
        cls, cert_file: str, key_file: str, client_ca_file: str = ""
    ) -> ServerTls | None:
        """The TLS files a service's ``tls_*`` settings name, checked; None when TLS is off
        (no certificate and no key). Raises :class:`SettingsError` for half a pair, a client
        CA without a certificate, or files that cannot serve."""
        if not cert_file and not key_file:
            if client_ca_file:
                raise SettingsError(
                    "setting tls_client_ca_file needs tls_cert_file and tls_key_file: "
                    "client certificates are only asked for over TLS"
                )
            return None
        if not cert_file or not key_file:
            missing = "tls_key_file" if cert_file else "tls_cert_file"
            raise SettingsError(f"setting {missing} is empty: TLS needs a certificate and its key")
        tls = cls(Path(cert_file), Path(key_file), Path(client_ca_file) if client_ca_file else None)
        try:
            _check_pair(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as err:
            raise SettingsError(
                f"settings tls_cert_file={cert_file!r}, tls_key_file={key_file!r}: "
                f"cannot serve TLS with them: {_reason(err)}"
            ) from err
        if tls.client_ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(tls.client_ca_file))
            except (OSError, ssl.SSLError) as err:
                raise SettingsError(
                    f"setting tls_client_ca_file={client_ca_file!r}: not a readable PEM CA "
                    f"bundle: {_reason(err)}"
                ) from err
        return tls


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Credentials that re-read ``tls``'s files when they change (see the module doc)."""
    rotation = _Rotation(tls)
    # gRPC documents None from the fetcher as "keep the current configuration"; its
    # type stub does not say so.
    fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], rotation.fetch)
    return grpc.dynamic_ssl_server_credentials(
        rotation.initial(),
        fetch,
        require_client_authentication=tls.client_ca_file is not None,
    )


@dataclass(frozen=True)
class ClientTls:
    """How a client reaches a TLS endpoint."""

    ca_file: Path | None = None
    """CA bundle to verify the server with (None: the system's roots)."""
    cert_file: Path | None = None
    """Client certificate chain, for mutual TLS."""
    key_file: Path | None = None
    """Its private key."""

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials (reads the files now)."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs its key (and a key its certificate)")
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


class _Rotation:
    """The certificate configuration of one server, reloaded when the files change.

    gRPC calls :meth:`fetch` from its own threads at every new handshake: it must
    be cheap when nothing changed (three ``stat`` calls) and must not raise.
    """

    def __init__(self, tls: ServerTls) -> None:
        self._tls = tls
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._refused: tuple[float, ...] | None = None

    def _files(self) -> list[Path]:
        files = [self._tls.cert_file, self._tls.key_file]
        if self._tls.client_ca_file is not None:
            files.append(self._tls.client_ca_file)
        return files

    def _stamps(self) -> tuple[float, ...]:
        return tuple(os.stat(f).st_mtime_ns for f in self._files())

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        tls = self._tls
        _check_pair(tls.cert_file, tls.key_file)
        return grpc.ssl_server_certificate_configuration(
            [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
            root_certificates=tls.client_ca_file.read_bytes() if tls.client_ca_file else None,
        )

    def initial(self) -> grpc.ServerCertificateConfiguration:
        """The configuration the server starts with."""
        return self._configuration()

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """A new configuration when the files changed and hold a usable pair, else None
        (gRPC keeps the current one)."""
        with self._lock:
            try:
                stamp = self._stamps()
            except OSError as err:  # mid-rotation: a file briefly missing
                logger.warning("TLS files not readable, keeping the current certificate: %s", err)
                return None
            if stamp in (self._stamp, self._refused):
                return None
            try:
                configuration = self._configuration()
            except (OSError, ssl.SSLError) as err:
                self._refused = stamp
                logger.warning(
                    "new TLS files refused, keeping the current certificate: %s", _reason(err)
                )
                return None
            self._stamp = stamp
            self._refused = None
            logger.info("TLS certificate reloaded from %s", self._tls.cert_file)
            return configuration


def _check_pair(cert_file: Path, key_file: Path) -> None:
    """Raises unless ``cert_file`` holds a certificate that ``key_file``'s key matches."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))


def _reason(err: Exception) -> str:
    if isinstance(err, ssl.SSLError) and err.reason:
        return str(err.reason)
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err)
