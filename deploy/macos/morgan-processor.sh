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
# Locks (docs/security.md): the kind's NKey seed (morgan nats-auth) and its mTLS client
# certificate (morgan certs client <kind>), copied to ~/.morgan/secrets.
secrets="${MORGAN_SECRETS:-$HOME/.morgan/secrets}"
export MORGAN_NATS_SEED_FILE="${MORGAN_NATS_SEED_FILE:-$secrets/$kind.nk}"
export MORGAN_NATS_TLS_CA="${MORGAN_NATS_TLS_CA:-$secrets/tls/ca.pem}"
export MORGAN_NATS_TLS_CERT="${MORGAN_NATS_TLS_CERT:-$secrets/tls/$kind.pem}"
export MORGAN_NATS_TLS_KEY="${MORGAN_NATS_TLS_KEY:-$secrets/tls/$kind-key.pem}"
# Empty = detect: with MPS the Mac serves the gpu tier of STT/TTS as well as cpu.
export MORGAN_TIERS="${MORGAN_TIERS:-}"
export MORGAN_DATA_DIR="${MORGAN_DATA_DIR:-$HOME/.morgan/data}"
export CONSUL_HTTP_ADDR="${CONSUL_HTTP_ADDR:-http://cpu-linux:8500}"
# The data layer, as in deploy/compose/*.yml: the LLM reads its context from Redis and
# PostgreSQL (writes go to whichever Patroni member takes them, reads prefer the standby).
export MORGAN_DATABASE_URL="${MORGAN_DATABASE_URL:-postgresql://morgan@cpu-linux:5432,gpu-linux:5432/morgan?target_session_attrs=read-write}"
export MORGAN_DATABASE_READ_URL="${MORGAN_DATABASE_READ_URL:-postgresql://morgan@cpu-linux:5432,gpu-linux:5432/morgan?target_session_attrs=prefer-standby}"
export MORGAN_REDIS_CLUSTER_NODES="${MORGAN_REDIS_CLUSTER_NODES:-cpu-linux:6379,gpu-linux:6379,gpu-wsl:6379}"
export MORGAN_QDRANT_URL="${MORGAN_QDRANT_URL:-http://qdrant:6333}"
# The Consul token lives in the login keychain, not in a file:
#   security add-generic-password -a "$USER" -s morgan-consul-token -w <token>
if [ -z "${CONSUL_HTTP_TOKEN:-}" ]; then
    CONSUL_HTTP_TOKEN=$(security find-generic-password -a "$USER" -s morgan-consul-token -w 2>/dev/null || true)
    export CONSUL_HTTP_TOKEN
fi
# So does the password of PostgreSQL's role "morgan" (asyncpg reads PGPASSWORD):
#   security add-generic-password -a "$USER" -s morgan-pgpassword -w <password>
if [ -z "${PGPASSWORD:-}" ]; then
    PGPASSWORD=$(security find-generic-password -a "$USER" -s morgan-pgpassword -w 2>/dev/null || true)
    export PGPASSWORD
fi

exec "$venv/bin/python" -m processors "$kind"
