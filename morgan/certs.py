"""``morgan certs``: the private CA and certificates for TLS between hosts (mTLS to NATS).

One directory holds everything a deployment's certificates come from::

    morgan certs ca --out tls/                      # tls/ca.pem, tls/ca-key.pem
    morgan certs host gpu-linux --dns nats-1 --ip 192.0.2.10 --out tls/
                                                    # tls/gpu-linux.pem, gpu-linux-key.pem
    morgan certs client gateway --out tls/          # tls/gateway.pem, gateway-key.pem
    morgan certs show tls/gpu-linux.pem             # subject, SANs, expiry, days left

Keys are ECDSA P-256 (accepted by nats-server's Go TLS and by Python's ``ssl``), written
with mode 0600; certificates with 0644. A host certificate names its host and the
``--dns``/``--ip`` given as SANs and is good for both ends of a connection (serverAuth
and clientAuth: a NATS route uses the same certificate to dial and to accept). A client
certificate's CN is its role (``gateway``, ``stt``...), clientAuth only. Re-issuing a
host or client certificate rewrites its files in place (rotation: owner and inode stay,
so a container's bind mount sees the new files); an existing CA is replaced only with
``--force``. docs/deploy.md, "TLS and certificates", has the whole procedure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
"""Default validity of a CA, days (ten years)."""
LEAF_DAYS = 365
"""Default validity of a host or client certificate, days: re-issue them yearly."""
SKEW = dt.timedelta(minutes=5)
"""How far back a certificate's validity starts, so a host whose clock runs a little
behind the issuer's accepts it at once."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CertError(Exception):
    """A certificate cannot be made as asked (existing CA, missing CA, bad name...)."""


@dataclass(frozen=True)
class Issued:
    """The two files written for one certificate."""

    cert: Path
    key: Path


def ca_files(directory: Path) -> Issued:
    return Issued(directory / "ca.pem", directory / "ca-key.pem")


def leaf_files(directory: Path, name: str) -> Issued:
    return Issued(directory / f"{name}.pem", directory / f"{name}-key.pem")


def make_ca(
    out: Path,
    *,
    days: int = CA_DAYS,
    name: str = "Morgan CA",
    force: bool = False,
    now: dt.datetime | None = None,
) -> Issued:
    """A new CA in ``out`` (``ca.pem``, ``ca-key.pem``). Its CN is ``name``, the date and
    a random tag, so an old and a new CA trusted side by side during a CA rotation never
    share a subject. Raises CertError when a CA is already there and not ``force``."""
    files = ca_files(out)
    if not force and (files.cert.exists() or files.key.exists()):
        raise CertError(f"a CA already exists in {out} (use --force to replace it)")
    start = _start(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Morgan"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"{name} {start:%Y-%m-%d} {secrets.token_hex(3)}"
            ),
        ]
    )
    cert = (
        _builder(subject, subject, key.public_key(), start, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    _save(files, cert, key, exclusive=not force)
    return files


def issue_host(
    ca_dir: Path,
    out: Path,
    name: str,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    days: int = LEAF_DAYS,
    now: dt.datetime | None = None,
) -> Issued:
    """``<name>.pem`` and ``<name>-key.pem`` in ``out``: a certificate for host ``name``
    (always one of its DNS SANs, then ``dns`` and ``ips``), for serving and dialling."""
    _check_name(name)
    addresses = [_ip(a) for a in ips]
    names = list(dict.fromkeys([name, *dns]))
    for dns_name in names:
        if not dns_name or any(c.isspace() for c in dns_name):
            raise CertError(f"not a DNS name: {dns_name!r}")
    san = x509.SubjectAlternativeName(
        [*(x509.DNSName(n) for n in names), *(x509.IPAddress(a) for a in addresses)]
    )
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue(ca_dir, out, name, san, eku, days, now)


def issue_client(
    ca_dir: Path, out: Path, role: str, *, days: int = LEAF_DAYS, now: dt.datetime | None = None
) -> Issued:
    """``<role>.pem`` and ``<role>-key.pem`` in ``out``: a client certificate, CN = role."""
    _check_name(role)
    return _issue(ca_dir, out, role, None, [ExtendedKeyUsageOID.CLIENT_AUTH], days, now)


def _issue(
    ca_dir: Path,
    out: Path,
    cn: str,
    san: x509.SubjectAlternativeName | None,
    eku: list[x509.ObjectIdentifier],
    days: int,
    now: dt.datetime | None,
) -> Issued:
    ca_cert, ca_key = _load_ca(ca_dir)
    start = _start(now)
    end = start + dt.timedelta(days=days)
    if end > ca_cert.not_valid_after_utc:
        raise CertError(
            f"{cn} would outlive its CA (valid until {ca_cert.not_valid_after_utc:%Y-%m-%d}):"
            " fewer --days, or a new CA"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        _builder(subject, ca_cert.subject, key.public_key(), start, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    files = leaf_files(out, cn)
    _save(files, cert, key, exclusive=False)
    return files


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Signing only; a CA also signs certificates and revocation lists."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: dt.datetime,
    days: int,
) -> x509.CertificateBuilder:
    if days < 1:
        raise CertError(f"validity must be at least one day, not {days}")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _start(now: dt.datetime | None) -> dt.datetime:
    return (now or dt.datetime.now(dt.UTC)) - SKEW


def _check_name(name: str) -> None:
    """Host and role names become file names next to the CA's."""
    if not _NAME.fullmatch(name) or name in ("ca", "ca-key"):
        raise CertError(f"not a usable name: {name!r} (letters, digits, '.', '_', '-'; not 'ca')")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise CertError(f"not an IP address: {text!r}") from None


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    files = ca_files(ca_dir)
    if not files.cert.exists() or not files.key.exists():
        raise CertError(f"no CA in {ca_dir} (morgan certs ca --out {ca_dir})")
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{files.key} is not an ECDSA key made by morgan certs")
    return cert, key


def _save(
    files: Issued, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, *, exclusive: bool
) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    _write(files.key, key_pem, 0o600, exclusive)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644, exclusive)


def _write(path: Path, data: bytes, mode: int, exclusive: bool) -> None:
    """Write ``data`` to ``path`` with ``mode``. ``exclusive``: fail if ``path`` exists.
    Otherwise an existing file is rewritten in place: it keeps its owner (set with ``chown``
    for a container's user) and its inode, so a container that bind-mounts the file
    (compose secrets) sees the new certificate."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CertError(f"{path} already exists") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


# ---- show -------------------------------------------------------------------------------


def describe(cert: x509.Certificate, now: dt.datetime | None = None) -> list[str]:
    """What ``morgan certs show`` prints about one certificate."""
    now = now or dt.datetime.now(dt.UTC)
    lines = [
        f"  subject  {cert.subject.rfc4514_string()}",
        f"  issuer   {cert.issuer.rfc4514_string()}",
    ]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        pass
    else:
        names = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        names += [f"IP:{a}" for a in san.get_values_for_type(x509.IPAddress)]
        lines.append(f"  SANs     {', '.join(names)}")
    lines.append(f"  usage    {', '.join(usage(cert))}")
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now > end:
        state = f"EXPIRED {_days(now - end)} ago"
    elif now < start:
        state = "NOT YET VALID"
    else:
        state = f"{_days(end - now)} left"
    lines.append(f"  valid    {start:%Y-%m-%d %H:%M} .. {end:%Y-%m-%d %H:%M} UTC ({state})")
    return lines


def _days(span: dt.timedelta) -> str:
    return "1 day" if span.days == 1 else f"{span.days} days"


def usage(cert: x509.Certificate) -> list[str]:
    """``CA`` for a CA, else the extended key usages by name (serverAuth, clientAuth)."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return ["CA"]
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return ["any"]
    names = {
        ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
        ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    }
    return [names.get(oid, oid.dotted_string) for oid in eku]


def show(paths: Sequence[Path], now: dt.datetime | None = None) -> tuple[list[str], bool]:
    """Lines describing every certificate in ``paths`` (a bundle shows each), and whether
    all of them are valid now."""
    now = now or dt.datetime.now(dt.UTC)
    lines: list[str] = []
    ok = True
    for path in paths:
        try:
            certs = x509.load_pem_x509_certificates(path.read_bytes())
        except ValueError as exc:
            raise CertError(f"{path}: no PEM certificate ({exc})") from None
        for i, cert in enumerate(certs):
            lines.append(f"{path}" + (f" [{i + 1}/{len(certs)}]" if len(certs) > 1 else ""))
            lines += describe(cert, now)
            ok = ok and cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
    return lines, ok


# ---- CLI --------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``morgan certs ...`` on the ``morgan`` command's subparsers."""
    p = sub.add_parser("certs", help="make the CA and TLS certificates for NATS (mTLS)")
    cmd = p.add_subparsers(dest="certs_command", required=True)
    ca = cmd.add_parser("ca", help="make a new CA: ca.pem, ca-key.pem")
    ca.add_argument("--out", type=Path, default=Path("."), help="directory (default: here)")
    ca.add_argument("--days", type=int, default=CA_DAYS, help=f"validity (default {CA_DAYS})")
    ca.add_argument("--force", action="store_true", help="replace an existing CA")
    host = cmd.add_parser("host", help="a host's certificate (NATS server and routes)")
    host.add_argument("name", help="the host's name, always a DNS SAN; also the file name")
    host.add_argument("--dns", action="append", default=[], help="more DNS names, a,b")
    host.add_argument("--ip", action="append", default=[], help="IP addresses, a,b")
    client = cmd.add_parser("client", help="a role's client certificate (CN = role)")
    client.add_argument("role", help="gateway, a processor kind, operator, admin...")
    for leaf in (host, client):
        leaf.add_argument("--out", type=Path, default=Path("."), help="directory (default: here)")
        leaf.add_argument(
            "--ca", type=Path, help="directory of ca.pem, ca-key.pem (default: --out)"
        )
        leaf.add_argument(
            "--days", type=int, default=LEAF_DAYS, help=f"validity (default {LEAF_DAYS})"
        )
    s = cmd.add_parser("show", help="subject, SANs, expiry and days left; exit 1 if not valid now")
    s.add_argument("files", nargs="+", type=Path)


def _split(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def run(args: argparse.Namespace) -> int:
    """Carry out ``morgan certs``: 0 done, 1 a certificate shown is not valid now,
    2 nothing done (the reason printed)."""
    try:
        if args.certs_command == "show":
            lines, ok = show(args.files)
            print("\n".join(lines))
            return 0 if ok else 1
        if args.certs_command == "ca":
            files = make_ca(args.out, days=args.days, force=args.force)
        elif args.certs_command == "host":
            files = issue_host(
                args.ca or args.out,
                args.out,
                args.name,
                dns=_split(args.dns),
                ips=_split(args.ip),
                days=args.days,
            )
        else:
            files = issue_client(args.ca or args.out, args.out, args.role, days=args.days)
    except (CertError, OSError) as exc:
        print(f"morgan certs: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {files.cert} and {files.key}")
    return 0
