#!/bin/sh
# Run one Morgan processor natively on the Mac, joined to the cluster:
#   deploy/macos/morgan-processor.sh llm|stt|tts
# launchd starts it through ~/Library/LaunchAgents/dev.morgan.<kind>.plist (example
# beside this file). Settings are MORGAN_* variables; an existing value wins, so a
# launchd plist or your shell can override any of them.
set -eu

kind="${1:?usage: morgan-processor.sh llm|stt|tts}"
venv="${VENV:-$HOME/.morgan/venv}"

export MORGAN_NATS_URL="${MORGAN_NATS_URL:-nats://cpu-linux:4222,nats://gpu-linux:4222,nats://gpu-wsl:4222}"
export MORGAN_REPLICAS="${MORGAN_REPLICAS:-3}"
# Empty = detect: with MPS the Mac serves the gpu tier of STT/TTS as well as cpu.
export MORGAN_TIERS="${MORGAN_TIERS:-}"
export MORGAN_DATA_DIR="${MORGAN_DATA_DIR:-$HOME/.morgan/data}"
export CONSUL_HTTP_ADDR="${CONSUL_HTTP_ADDR:-http://cpu-linux:8500}"
# The Consul token lives in the login keychain, not in a file:
#   security add-generic-password -a "$USER" -s morgan-consul-token -w <token>
if [ -z "${CONSUL_HTTP_TOKEN:-}" ]; then
    CONSUL_HTTP_TOKEN=$(security find-generic-password -a "$USER" -s morgan-consul-token -w 2>/dev/null || true)
    export CONSUL_HTTP_TOKEN
fi

exec "$venv/bin/python" -m processors "$kind"
