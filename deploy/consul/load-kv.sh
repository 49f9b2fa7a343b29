#!/bin/sh
# Write every key of a kv JSON file (default: kv-example.json beside this script) to
# Consul KV, each value as compact JSON. Needs consul and jq; uses CONSUL_HTTP_ADDR and
# CONSUL_HTTP_TOKEN (an operator token: Morgan's own token only reads).
#   CONSUL_HTTP_TOKEN=... deploy/consul/load-kv.sh my-kv.json
set -eu
file="${1:-$(dirname "$0")/kv-example.json}"
jq -r 'keys[]' "$file" | while read -r key; do
    jq -c --arg k "$key" '.[$k]' "$file" | consul kv put "$key" -
    echo "put $key"
done
