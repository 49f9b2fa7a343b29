#!/bin/sh
# Write every key of a kv JSON file (default: kv-example.json beside this script) to
# Consul KV through its HTTP API, in the layout streams/config_source.py reads
# (docs/consul.md): an object (morgan/config/<area>) is stored as compact JSON, a string
# (morgan/secrets/<field>) as its raw text. Needs curl and jq. Uses Consul's own variables:
# CONSUL_HTTP_ADDR (default 127.0.0.1:8500; host:port, http(s)://host:port or
# unix:///path), CONSUL_HTTP_TOKEN (an operator token: Morgan's own token only reads),
# CONSUL_HTTP_SSL, CONSUL_CACERT, CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY.
#   CONSUL_HTTP_TOKEN=... deploy/consul/load-kv.sh my-kv.json
set -eu
file="${1:-$(dirname "$0")/kv-example.json}"
addr="${CONSUL_HTTP_ADDR:-127.0.0.1:8500}"
set --
case "$addr" in
unix://*) set -- --unix-socket "${addr#unix://}"; base="http://consul" ;;
*://*) base="${addr%/}" ;;
*) if [ "${CONSUL_HTTP_SSL:-false}" = true ]; then base="https://$addr"; else base="http://$addr"; fi ;;
esac
[ -n "${CONSUL_HTTP_TOKEN:-}" ] && set -- "$@" --header "X-Consul-Token: $CONSUL_HTTP_TOKEN"
[ -n "${CONSUL_CACERT:-}" ] && set -- "$@" --cacert "$CONSUL_CACERT"
[ -n "${CONSUL_CLIENT_CERT:-}" ] && set -- "$@" --cert "$CONSUL_CLIENT_CERT"
[ -n "${CONSUL_CLIENT_KEY:-}" ] && set -- "$@" --key "$CONSUL_CLIENT_KEY"
jq -e 'type == "object" and all(.[]; type == "object" or type == "string")' "$file" >/dev/null ||
    { echo "$file: want an object of keys to objects (config) or strings (secrets)" >&2; exit 1; }
jq -r 'keys[]' "$file" | while read -r key; do
    jq -j --arg k "$key" '.[$k] | if type == "string" then . else tojson end' "$file" |
        curl --silent --show-error --fail --max-time 10 "$@" --request PUT \
            --data-binary @- "$base/v1/kv/$key" >/dev/null
    echo "put $key"
done
