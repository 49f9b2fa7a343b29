"""The HTTP edge's pure parts: Host and Origin rules, and log redaction."""

from __future__ import annotations

import logging

import pytest

from gateway.http_guard import HostRule, names, origin_key, same_origin, split_host
from gateway.log_filters import RedactSecrets, redact

RULE = HostRule(allowed=names("morgan.example, *.corp.example"), machine=names("box,box.lan"))


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:80", ("::1", 80)),
        ("[::1]", ("::1", None)),
        ("Morgan.Example.", ("morgan.example", None)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_split_host_gives_the_lower_case_name_and_the_port(
    host: str, expected: tuple[str, int | None]
) -> None:
    assert split_host(host) == expected


@pytest.mark.parametrize("host", ["::1", "[::1", "[::1]x", "a:b", "a:99999", "a:"])
def test_split_host_refuses_malformed_hosts(host: str) -> None:
    with pytest.raises(ValueError):
        split_host(host)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "10.1.2.3",
        "10.1.2.3:8080",
        "[fe80::1]:8080",
        "localhost",
        "LOCALHOST.:80",
        "app.localhost",
        "box",
        "box.lan:8080",
        "morgan.example",
        "a.corp.example",
    ],
)
def test_ip_literals_local_names_and_allowed_names_are_served(host: str | None) -> None:
    assert RULE.refusal_reason(host) is None


@pytest.mark.parametrize(
    "host",
    ["evil.example", "localhost.evil.example", "corp.example", "2130706433", "", "[::1"],
)
def test_other_names_are_refused_with_a_reason(host: str) -> None:
    assert RULE.refusal_reason(host)


def test_a_star_allows_any_host() -> None:
    assert HostRule(names("*"), frozenset()).refusal_reason("evil.example") is None


@pytest.mark.parametrize(
    "origin, key",
    [
        ("https://App.Example", ("https", "app.example", 443)),
        ("http://127.0.0.1:8080", ("http", "127.0.0.1", 8080)),
        ("http://[::1]:80/", ("http", "::1", 80)),
        ("null", None),
        ("ws://a.example", None),
        ("https://a.example:99999", None),
        ("https://a.example/path", None),
    ],
)
def test_origin_key_parses_http_origins_only(origin: str, key: tuple[str, str, int] | None) -> None:
    assert origin_key(origin) == key


@pytest.mark.parametrize(
    "origin, host, same",
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("https://morgan.example", "morgan.example", True),  # TLS ended at a proxy
        ("http://morgan.example", "morgan.example", True),
        ("https://morgan.example:8443", "morgan.example", False),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("http://evil.example:8080", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8080", None, False),
    ],
)
def test_same_origin_compares_the_name_and_port_of_host(
    origin: str, host: str | None, same: bool
) -> None:
    key = origin_key(origin)
    assert key is not None and same_origin(key, host) is same


@pytest.mark.parametrize(
    "text, clean",
    [
        ('"GET /ws?api_key=s3cret HTTP/1.1" 200', '"GET /ws?api_key=*** HTTP/1.1" 200'),
        ("/x?a=1&API-KEY=s3cret&b=2", "/x?a=1&API-KEY=***&b=2"),
        ("/x?apikey=s3cret#f", "/x?apikey=***#f"),
        ("< Authorization: Bearer s3cret", "< Authorization: ***"),
        ("Cookie: morgan_gw=s3cret", "Cookie: ***"),
        ('> TEXT \'{"resume_token": "s3cret"}\'', '> TEXT \'{"resume_token": "***"}\''),
        ("/ws?session=abc", "/ws?session=abc"),
    ],
)
def test_redact_hides_secret_values_only(text: str, clean: str) -> None:
    assert redact(text) == clean


def test_the_filter_rewrites_a_record_formatted_with_args() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s"',
        ("c", "GET", "/?api_key=k"),
        None,
    )
    assert RedactSecrets().filter(record)
    assert record.getMessage() == 'c - "GET /?api_key=***"'
