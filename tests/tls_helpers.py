"""Certificates for tests, made by ``morgan certs`` (morgan/certs.py) as an operator would.

    ca = CertAuthority("test-ca", tmp_path)
    server = ca.issue("consul", hosts=("127.0.0.1", "localhost"))
    client = ca.issue("gateway", client=True, server=False)
    expired = ca.issue("late", client=True, server=False, valid_for=(-2 * DAY, -DAY))

A server's certificate is good for serving and dialling (as ``morgan certs host``), a
client-only one for dialling (``morgan certs client``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from morgan import certs
from morgan.certs import Issued as CertFiles

DAY = dt.timedelta(days=1)

__all__ = ["DAY", "CertAuthority", "CertFiles"]


class CertAuthority:
    """A CA in ``directory`` (``ca.pem``); ``name`` starts its common name."""

    def __init__(self, name: str, directory: Path) -> None:
        self.directory = directory
        self.cert_file = certs.make_ca(directory, name=name).cert
        """The CA certificate (what a verifier trusts: CONSUL_CACERT, Traefik's ``ca``)."""

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
        server: bool = True,
        client: bool = False,
        valid_for: tuple[dt.timedelta, dt.timedelta] = (-DAY, 30 * DAY),
    ) -> CertFiles:
        """A certificate for ``name`` (and ``hosts`` as subject alternative names);
        ``valid_for`` is (not before, not after) relative to now, so ``(-2 * DAY, -DAY)``
        is a certificate that expired yesterday."""
        now = dt.datetime.now(dt.UTC) + valid_for[0] + certs.SKEW
        days = (valid_for[1] - valid_for[0]).days
        if not server:
            return certs.issue_client(self.directory, self.directory, name, days=days, now=now)
        ips = [h for h in hosts if _is_ip(h)]
        dns = [h for h in hosts if not _is_ip(h)]
        return certs.issue_host(
            self.directory, self.directory, name, dns=dns, ips=ips, days=days, now=now
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
