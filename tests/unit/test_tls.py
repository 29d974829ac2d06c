"""TLS settings and certificate rotation, checked without a server."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from services.router.settings import load_settings
from tests.tls_certs import Authority, Pair
from voxmesh.errors import SettingsError
from voxmesh.rpc.tls import ServerTls, _Rotation


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Authority, Pair, Pair]:
    directory = tmp_path_factory.mktemp("certs")
    ca = Authority(directory, "ca")
    return ca, ca.issue("server"), ca.issue("other")


def test_no_certificate_and_no_key_is_plaintext() -> None:
    assert ServerTls.from_settings("", "") is None


def test_half_a_pair_names_the_missing_setting(certs: tuple[Authority, Pair, Pair]) -> None:
    _, server, _ = certs
    with pytest.raises(SettingsError, match="tls_key_file is empty"):
        ServerTls.from_settings(str(server.cert), "")
    with pytest.raises(SettingsError, match="tls_cert_file is empty"):
        ServerTls.from_settings("", str(server.key))


def test_client_ca_without_a_certificate_is_refused(certs: tuple[Authority, Pair, Pair]) -> None:
    ca, _, _ = certs
    with pytest.raises(SettingsError, match="tls_client_ca_file needs"):
        ServerTls.from_settings("", "", str(ca.cert))


def test_a_key_that_does_not_match_the_certificate_is_refused_at_start(
    certs: tuple[Authority, Pair, Pair],
) -> None:
    _, server, other = certs
    with pytest.raises(SettingsError, match="cannot serve TLS"):
        ServerTls.from_settings(str(server.cert), str(other.key))


def test_a_missing_file_is_refused_at_start(
    certs: tuple[Authority, Pair, Pair], tmp_path: Path
) -> None:
    _, server, _ = certs
    with pytest.raises(SettingsError, match="No such file"):
        ServerTls.from_settings(str(tmp_path / "absent.pem"), str(server.key))
    with pytest.raises(SettingsError, match="tls_client_ca_file"):
        ServerTls.from_settings(str(server.cert), str(server.key), str(tmp_path / "absent.pem"))


def test_a_usable_pair_with_a_client_ca(certs: tuple[Authority, Pair, Pair]) -> None:
    ca, server, _ = certs
    tls = ServerTls.from_settings(str(server.cert), str(server.key), str(ca.cert))
    assert tls == ServerTls(server.cert, server.key, ca.cert)


def test_router_settings_check_the_tls_files_when_loaded(
    certs: tuple[Authority, Pair, Pair],
) -> None:
    _, server, other = certs
    with pytest.raises(SettingsError, match="cannot serve TLS"):
        load_settings(["--tls-cert-file", str(server.cert), "--tls-key-file", str(other.key)], {})
    env = {
        "VOXMESH_ROUTER_TLS_CERT_FILE": str(server.cert),
        "VOXMESH_ROUTER_TLS_KEY_FILE": str(server.key),
    }
    assert load_settings([], env).tls == ServerTls(server.cert, server.key)


def _install(pair: Pair, into: Pair, stamp_s: float) -> None:
    """Copies ``pair`` over ``into`` and dates both files ``stamp_s`` (a rotation)."""
    for source, target in ((pair.cert, into.cert), (pair.key, into.key)):
        shutil.copyfile(source, target)
        os.utime(target, (stamp_s, stamp_s))


def test_rotation_reloads_changed_files_and_keeps_the_old_pair_when_the_new_one_is_bad(
    certs: tuple[Authority, Pair, Pair], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, server, other = certs
    live = Pair(tmp_path / "live.pem", tmp_path / "live.key")
    _install(server, live, 1_000_000)
    rotation = _Rotation(ServerTls(live.cert, live.key))
    assert rotation.initial() is not None
    assert rotation.fetch() is None  # nothing changed: gRPC keeps the current configuration

    shutil.copyfile(other.cert, live.cert)  # half a rotation: new certificate, old key
    os.utime(live.cert, (2_000_000, 2_000_000))
    with caplog.at_level(logging.WARNING, logger="voxmesh.rpc.tls"):
        assert rotation.fetch() is None
        assert rotation.fetch() is None  # refused once, not re-read at every handshake
    assert [r.message for r in caplog.records].count(
        "new TLS files refused, keeping the current certificate: KEY_VALUES_MISMATCH"
    ) == 1

    _install(other, live, 3_000_000)  # the rotation completes
    assert rotation.fetch() is not None
    assert rotation.fetch() is None

    live.key.unlink()  # briefly missing while a deployment tool replaces it
    assert rotation.fetch() is None
