#!/bin/sh
# Container entrypoint: turn Docker/Swarm secrets into the env vars Morgan reads, then exec.
#
# Morgan reads configuration only from MORGAN_* env vars (streams/settings.py) and Consul's
# own CONSUL_HTTP_TOKEN. A secret mounted as /run/secrets/MORGAN_API_KEYS (the file name is
# the variable name) becomes MORGAN_API_KEYS, so keys never sit in a compose file or in
# `docker inspect`. PGPASSWORD is the third: the PostgreSQL password that asyncpg uses
# when a DSN (MORGAN_DATABASE_URL, MORGAN_DATABASE_READ_URL) names none, so the DSNs can
# sit in the compose files. Only MORGAN_*, CONSUL_HTTP_TOKEN and PGPASSWORD files are
# read; a variable already set in the environment wins. SECRETS_DIR overrides
# /run/secrets (used by the tests).
set -eu

dir="${SECRETS_DIR:-/run/secrets}"
if [ -d "$dir" ]; then
    for f in "$dir"/MORGAN_* "$dir"/CONSUL_HTTP_TOKEN "$dir"/PGPASSWORD; do
        [ -f "$f" ] || continue
        name=$(basename "$f")
        case "$name" in
            *[!A-Z0-9_]*) echo "morgan-entrypoint: skipping secret with bad name: $name" >&2; continue ;;
        esac
        if eval "[ -z \"\${$name+set}\" ]"; then
            # $(cat) drops trailing newlines, which `echo secret > file` adds.
            value=$(cat "$f")
            export "$name=$value"
        fi
    done
fi

exec "$@"
