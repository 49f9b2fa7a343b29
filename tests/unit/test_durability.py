"""Every nats-server Morgan starts states how often it fsyncs (EVENTS is the history's
write queue): one second unless told otherwise, as deploy/nats/*.conf do."""

from __future__ import annotations

from pathlib import Path

from morgan.cli import parser
from streams import embedded


def test_morgan_nats_fsyncs_every_second_unless_told_otherwise() -> None:
    assert parser().parse_args(["nats"]).sync_interval == "1s" == embedded.SYNC_INTERVAL
    assert parser().parse_args(["nats", "--sync-interval", "always"]).sync_interval == "always"


def test_the_server_config_states_the_sync_interval() -> None:
    text = embedded.config_text(
        host="127.0.0.1",
        port=0,
        http_port=0,
        store_dir=Path("/tmp/x"),
        server_name="n1",
        cluster=None,
        sync_interval=embedded.SYNC_INTERVAL,
    )
    assert '  sync_interval: "1s"' in text.splitlines()
