"""Pure parts of closed internal surfaces: token files (re-read on change, last good kept),
constant-time acceptance of several tokens, and certificate generation and renewal."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shardrec.api import pki
from shardrec.serving.credentials import StaticTokens, TokenFile, TokenFileError, accepts
from shardrec.serving.tls import client_context, server_context

NOW = datetime(2026, 12, 5, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_accepts_any_listed_token_and_nothing_else() -> None:
    assert accepts(("a", "b"), "Bearer a") and accepts(("a", "b"), "Bearer b")
    assert not accepts(("a", "b"), "Bearer c")
    assert not accepts(("a",), "a") and not accepts(("a",), "Bearer a ") and not accepts((), "Bearer ")
    assert StaticTokens("x", "").tokens() == ("x",)


def test_a_token_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "accepted"
    path.write_text("old\n")
    clock = Clock()
    tokens = TokenFile(path, recheck_s=1.0, clock=clock)
    assert tokens.tokens() == ("old",)
    path.write_text("old\nnew\n")
    assert tokens.tokens() == ("old",), "not re-checked within recheck_s"
    clock.t = 1.5
    assert tokens.tokens() == ("old", "new")
    assert tokens.first() == "old"


def test_a_token_file_keeps_the_last_good_tokens(tmp_path: Path) -> None:
    path = tmp_path / "send"
    path.write_text("a\n")
    clock = Clock()
    tokens = TokenFile(path, clock=clock)
    path.write_text("")  # mid-update, or a broken Secret
    clock.t = 2
    assert tokens.tokens() == ("a",)
    path.unlink()
    clock.t = 4
    assert tokens.tokens() == ("a",)
    path.write_text("b\n")
    clock.t = 6
    assert tokens.tokens() == ("b",)


def test_a_missing_or_empty_token_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="No such file"):
        TokenFile(tmp_path / "absent")
    (tmp_path / "empty").write_text("\n\n")
    with pytest.raises(TokenFileError, match="no token"):
        TokenFile(tmp_path / "empty")


def test_a_server_certificate_chains_to_its_ca_and_names_its_hosts() -> None:
    ca = pki.new_ca("shardrec recs.ml", NOW)
    server = pki.new_server_cert(ca, ["*.recs-a-0.ml.svc", "localhost"], NOW, ip_addresses=["127.0.0.1"])
    assert pki.signed_by(server.cert_pem, ca.cert_pem)
    assert not pki.signed_by(server.cert_pem, pki.new_ca("another", NOW).cert_pem)
    assert pki.dns_names(server.cert_pem) == ["*.recs-a-0.ml.svc", "localhost"]
    valid = pki.validity(server.cert_pem)
    assert valid.not_before == NOW - pki.CLOCK_SKEW and valid.not_after == NOW + pki.SERVER_VALIDITY


def test_a_server_certificate_never_outlives_its_ca() -> None:
    ca = pki.new_ca("short", NOW, valid_for=timedelta(days=10))
    server = pki.new_server_cert(ca, ["localhost"], NOW)
    assert pki.validity(server.cert_pem).not_after == pki.validity(ca.cert_pem).not_after


def test_renewal_starts_when_a_third_of_the_lifetime_is_left() -> None:
    valid = pki.Validity(NOW, NOW + timedelta(days=90))
    assert not pki.needs_renewal(valid, NOW)
    assert not pki.needs_renewal(valid, NOW + timedelta(days=59, hours=23))
    assert pki.needs_renewal(valid, NOW + timedelta(days=60))
    assert pki.needs_renewal(valid, NOW + timedelta(days=91)), "expired"
    assert pki.needs_renewal(valid, NOW - timedelta(days=1)), "not yet valid (clock moved back)"
    assert not pki.needs_renewal(valid, NOW + timedelta(days=80), renew_before=timedelta(days=7))
    assert pki.needs_renewal(valid, NOW + timedelta(days=83), renew_before=timedelta(days=7))


def test_the_contexts_load_what_pki_writes(tmp_path: Path) -> None:
    ca = pki.new_ca("ca", datetime.now(UTC))
    server = pki.new_server_cert(ca, ["localhost"], datetime.now(UTC))
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "tls.crt").write_bytes(server.cert_pem)
    (tmp_path / "tls.key").write_bytes(server.key_pem)
    assert (
        server_context(tmp_path / "tls.crt", tmp_path / "tls.key").minimum_version == ssl.TLSVersion.TLSv1_2
    )
    client = client_context(tmp_path / "ca.pem")
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname
