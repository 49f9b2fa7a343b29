"""``morgan keys``: API keys, stored hashed (gateway/keys.py), in the keys file or NATS KV.

    morgan keys add USER [--name N]    make a key for USER; prints it once, on stdout
    morgan keys list                   id, user, name, created, revoked
    morgan keys revoke REF             REF: the id, a unique prefix of it, or the key

They act on ``MORGAN_API_KEYS_FILE`` (or ``--file``), or with ``--nats`` on the KV
bucket ``MORGAN_API_KEYS`` of ``MORGAN_NATS_URL`` (as a NATS role that may write it,
``MORGAN_NATS_SEED_FILE``). A running gateway sees the change within a second; a
revoked key's requests get 401 ``key_revoked`` and its open sessions close (4401).
Exit status: 0 done, 1 no such key or an unreadable store, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from nats.errors import Error as NatsError

from gateway.keys import KeyEntry, KeyFile, KeysError, KvKeys, find, new_key
from streams import bus
from streams.settings import Settings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The ``keys`` command and its subcommands, on the program's subparsers."""
    store = argparse.ArgumentParser(add_help=False)
    where = store.add_mutually_exclusive_group()
    where.add_argument("--file", help="the keys file (default: MORGAN_API_KEYS_FILE)")
    where.add_argument(
        "--nats", action="store_true", help="the NATS KV bucket MORGAN_API_KEYS instead"
    )
    k = sub.add_parser("keys", help="API keys: add, list, revoke (stored hashed)")
    verbs = k.add_subparsers(dest="keys_command", required=True)
    add = verbs.add_parser("add", parents=[store], help="make a key; printed once")
    add.add_argument("user", help="the user the key acts for (sessions, history, memory)")
    add.add_argument("--name", default="", help="a label: where the key is used")
    verbs.add_parser("list", parents=[store], help="every key, revoked ones too")
    revoke = verbs.add_parser("revoke", parents=[store], help="revoke a key at once")
    revoke.add_argument("ref", metavar="ID", help="the key's id, a unique prefix, or the key")


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        if args.nats:
            return asyncio.run(_on_bucket(settings, args))
        path = args.file or settings.api_keys_file
        if not path:
            print(
                "no keys file: set MORGAN_API_KEYS_FILE, or pass --file or --nats", file=sys.stderr
            )
            return 2
        return _on_file(KeyFile(Path(path)), args)
    except KeysError as exc:
        print(f"morgan keys: {exc}", file=sys.stderr)
        return 1
    except (NatsError, TimeoutError, OSError) as exc:
        print(f"morgan keys: {exc!r}", file=sys.stderr)
        return 1


def _on_file(store: KeyFile, args: argparse.Namespace) -> int:
    where = str(store.path)
    if args.keys_command == "list":
        entries, skipped = store.read()
        for problem in skipped:
            print(f"skipped a bad entry: {problem}", file=sys.stderr)
        return _list(entries)
    if args.keys_command == "add":
        key = new_key()
        entry = KeyEntry.make(key, args.user, args.name)
        with store.locked() as entries:
            entries.append(entry)
        return _added(key, entry, where)
    with store.locked() as entries:
        found = find(entries, args.ref)
        entries[entries.index(found)] = found.revoke()
    return _revoked(found, found.revoked is None, where)


async def _on_bucket(settings: Settings, args: argparse.Namespace) -> int:
    nc = await bus.connect(settings, "morgan-keys", keep_trying=False)
    try:
        store = await KvKeys.open(nc.jetstream(), settings)
        where = "NATS KV bucket MORGAN_API_KEYS"
        if args.keys_command == "list":
            entries, skipped = await store.entries()
            for problem in skipped:
                print(f"skipped a bad entry: {problem}", file=sys.stderr)
            return _list(entries)
        if args.keys_command == "add":
            key = new_key()
            entry = KeyEntry.make(key, args.user, args.name)
            await store.add(entry)
            return _added(key, entry, where)
        revoked, was_valid = await store.revoke(args.ref)
        return _revoked(revoked, was_valid, where)
    finally:
        await nc.close()


def _added(key: str, entry: KeyEntry, where: str) -> int:
    label = f" ({entry.name})" if entry.name else ""
    print(f"key {entry.id} for user {entry.user}{label} added to {where}.", file=sys.stderr)
    print("It is shown only now (Morgan keeps its hash): store it.", file=sys.stderr)
    print(key)
    return 0


def _revoked(entry: KeyEntry, was_valid: bool, where: str) -> int:
    if was_valid:
        print(f"key {entry.id} of user {entry.user} revoked in {where}")
    else:
        print(f"key {entry.id} of user {entry.user} was revoked already ({entry.revoked})")
    return 0


def _list(entries: list[KeyEntry]) -> int:
    rows = [("ID", "USER", "NAME", "CREATED", "REVOKED")]
    rows += [(e.id, e.user, e.name, e.created, e.revoked or "-") for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0
