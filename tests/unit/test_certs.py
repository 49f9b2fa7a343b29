"""``morgan certs`` (morgan/certs.py): what each certificate says, and the files it writes.

That nats-server and Python's ssl accept them is tests/integration/test_nats_tls.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from morgan import certs, cli

NOW = dt.datetime(2030, 6, 1, 12, 0, tzinfo=dt.UTC)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    certs.make_ca(tmp_path / "ca", now=NOW)
    return tmp_path / "ca"


def test_ca_is_a_self_signed_p256_ca_for_ten_years(ca: Path) -> None:
    cert = load(ca / "ca.pem")
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == dt.timedelta(days=3650)


def test_two_cas_never_share_a_subject(tmp_path: Path) -> None:
    first = certs.make_ca(tmp_path / "one", now=NOW)
    second = certs.make_ca(tmp_path / "two", now=NOW)
    assert load(first.cert).subject != load(second.cert).subject


def test_host_certificate_names_its_host_the_dns_names_and_the_ips_given(ca: Path) -> None:
    files = certs.issue_host(
        ca, ca, "gpu-linux", dns=["nats-1", "gpu-linux"], ips=["192.0.2.10", "fd00::1"]
    )
    cert = load(files.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gpu-linux", "nats-1"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.10"),
        ipaddress.ip_address("fd00::1"),
    ]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gpu-linux"
    cert.verify_directly_issued_by(load(ca / "ca.pem"))


def test_host_certificate_serves_and_dials_and_is_no_ca(ca: Path) -> None:
    cert = load(certs.issue_host(ca, ca, "cpu-linux").cert)
    assert eku(cert) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_client_certificate_is_named_after_its_role_and_only_dials(ca: Path) -> None:
    cert = load(certs.issue_client(ca, ca, "gateway").cert)
    assert cert.subject.rfc4514_string() == "CN=gateway"
    assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    cert.verify_directly_issued_by(load(ca / "ca.pem"))


def test_certificates_are_valid_for_the_days_asked_from_a_little_before_now(ca: Path) -> None:
    cert = load(certs.issue_client(ca, ca, "stt", days=30, now=NOW).cert)
    assert cert.not_valid_before_utc == NOW - certs.SKEW
    assert cert.not_valid_after_utc == NOW - certs.SKEW + dt.timedelta(days=30)


def test_keys_are_written_for_their_owner_only_and_certificates_for_all(ca: Path) -> None:
    files = certs.issue_host(ca, ca, "gpu-wsl")
    assert mode(files.key) == mode(ca / "ca-key.pem") == 0o600
    assert mode(files.cert) == mode(ca / "ca.pem") == 0o644


def test_reissuing_rewrites_the_files_in_place_and_makes_a_lax_key_private_again(
    ca: Path,
) -> None:
    first = certs.issue_client(ca, ca, "tts")
    first.key.chmod(0o644)
    inode, serial = first.key.stat().st_ino, load(first.cert).serial_number
    again = certs.issue_client(ca, ca, "tts")
    assert again == first
    assert again.key.stat().st_ino == inode and mode(again.key) == 0o600
    assert load(again.cert).serial_number != serial


def test_making_a_ca_where_one_exists_is_refused_and_leaves_it_alone(ca: Path) -> None:
    before = (ca / "ca.pem").read_bytes(), (ca / "ca-key.pem").read_bytes()
    with pytest.raises(certs.CertError, match="already exists"):
        certs.make_ca(ca)
    (ca / "ca.pem").unlink()  # half a CA left behind is not overwritten either
    with pytest.raises(certs.CertError, match="already exists"):
        certs.make_ca(ca)
    assert (ca / "ca-key.pem").read_bytes() == before[1]


def test_force_replaces_an_existing_ca(ca: Path) -> None:
    before = load(ca / "ca.pem")
    certs.make_ca(ca, force=True)
    assert load(ca / "ca.pem").subject != before.subject


def test_a_certificate_that_would_outlive_its_ca_is_refused(tmp_path: Path) -> None:
    certs.make_ca(tmp_path, days=100)
    with pytest.raises(certs.CertError, match="outlive"):
        certs.issue_client(tmp_path, tmp_path, "llm", days=365)
    assert not (tmp_path / "llm.pem").exists()


@pytest.mark.parametrize("name", ["ca", "ca-key", "../escape", "", "-dash", "a b"])
def test_names_that_are_not_plain_file_names_or_would_clobber_the_ca_are_refused(
    ca: Path, name: str
) -> None:
    with pytest.raises(certs.CertError, match="not a usable name"):
        certs.issue_client(ca, ca, name)


def test_a_bad_ip_address_is_refused(ca: Path) -> None:
    with pytest.raises(certs.CertError, match="not an IP address"):
        certs.issue_host(ca, ca, "gpu-linux", ips=["gpu-linux"])


def test_issuing_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(certs.CertError, match="morgan certs ca --out"):
        certs.issue_client(tmp_path, tmp_path, "vad")


def test_show_gives_subject_sans_expiry_and_days_left(ca: Path) -> None:
    files = certs.issue_host(ca, ca, "gpu-linux", ips=["192.0.2.10"], days=90, now=NOW)
    lines, ok = certs.show([files.cert], now=NOW + dt.timedelta(days=10))
    text = "\n".join(lines)
    assert ok
    assert "subject  CN=gpu-linux" in text
    assert "SANs     DNS:gpu-linux, IP:192.0.2.10" in text
    assert "usage    serverAuth, clientAuth" in text
    assert "2030-08-30 11:55 UTC (79 days left)" in text


def test_show_marks_an_expired_certificate_and_reports_not_ok(ca: Path) -> None:
    files = certs.issue_client(ca, ca, "memory", days=1, now=NOW)
    lines, ok = certs.show([files.cert], now=NOW + dt.timedelta(days=2))
    assert not ok
    assert lines[-1].endswith("2030-06-02 11:55 UTC (EXPIRED 1 day ago)")


def test_show_lists_every_certificate_of_a_ca_bundle(ca: Path, tmp_path: Path) -> None:
    certs.make_ca(tmp_path / "new", now=NOW)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((ca / "ca.pem").read_bytes() + (tmp_path / "new" / "ca.pem").read_bytes())
    lines, ok = certs.show([bundle], now=NOW)
    assert ok
    assert [line for line in lines if line.startswith(str(bundle))] == [
        f"{bundle} [1/2]",
        f"{bundle} [2/2]",
    ]


# ---- the command line ------------------------------------------------------------------


def test_morgan_certs_makes_a_ca_a_host_and_a_client_certificate_and_shows_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "tls")
    assert cli.main(["certs", "ca", "--out", out]) == 0
    host = ["certs", "host", "gpu-linux", "--dns", "nats-1,gpu-linux.lan", "--ip", "192.0.2.10"]
    assert cli.main([*host, "--ip", "fd00::1", "--out", out, "--days", "90"]) == 0
    assert cli.main(["certs", "client", "gateway", "--out", out]) == 0
    capsys.readouterr()
    assert cli.main(["certs", "show", f"{out}/gpu-linux.pem", f"{out}/gateway.pem"]) == 0
    shown = capsys.readouterr().out
    assert (
        "SANs     DNS:gpu-linux, DNS:nats-1, DNS:gpu-linux.lan, IP:192.0.2.10, IP:fd00::1" in shown
    )
    assert "(89 days left)" in shown
    assert "subject  CN=gateway" in shown


def test_morgan_certs_refuses_to_replace_a_ca_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["certs", "ca", "--out", str(tmp_path)]) == 0
    assert cli.main(["certs", "ca", "--out", str(tmp_path)]) == 2
    assert "use --force" in capsys.readouterr().err
    assert cli.main(["certs", "ca", "--out", str(tmp_path), "--force"]) == 0


def test_morgan_certs_show_exits_1_for_an_expired_certificate(
    ca: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    files = certs.issue_client(ca, ca, "history", days=1, now=old)
    assert cli.main(["certs", "show", str(files.cert)]) == 1
    assert "EXPIRED" in capsys.readouterr().out
