#!/usr/bin/env bash
# Register SuperNode public keys with a SuperLink that runs with SuperNode authentication.
# A SuperNode whose key is not registered is refused: register before starting it.
#
#   deploy/register-nodes.sh CONNECTION PUBLIC_KEY...
#   deploy/register-nodes.sh feddat certs/supernode-*.pub
#   CERTS_DIR=certs deploy/register-nodes.sh superlink.example.org:8000 certs/supernode-*.pub
#
# CONNECTION is either a SuperLink connection in $FLWR_HOME/config.toml (default ~/.flwr), e.g.
#   [superlink.feddat]
#   address = "superlink.example.org:8000"
#   root-certificates = "/abs/path/certs/ca.crt"
# or HOST:PORT of the SuperLink, verified with $CERTS_DIR/ca.crt (default certs/ca.crt).
# Idempotent: a key that is already registered is reported and skipped. Prints one line per key.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
connection=$1
shift
export FLWR_TELEMETRY_ENABLED=${FLWR_TELEMETRY_ENABLED:-0}
export FLWR_DISABLE_UPDATE_CHECK=${FLWR_DISABLE_UPDATE_CHECK:-1}

if [[ "$connection" == *:* ]]; then  # HOST:PORT: a throwaway flwr configuration
    ca=$(realpath "${CERTS_DIR:-certs}/ca.crt")
    FLWR_HOME=$(mktemp -d)
    export FLWR_HOME
    trap 'rm -rf "$FLWR_HOME"' EXIT
    printf '[superlink]\ndefault = "target"\n\n[superlink.target]\naddress = "%s"\nroot-certificates = "%s"\n' \
        "$connection" "$ca" >"$FLWR_HOME/config.toml"
    connection=target
fi

for key in "$@"; do
    # `--format json` exits 0 even on failure: judge by the reply.
    reply=$(flwr supernode register "$key" "$connection" --name "$(basename "$key" .pub)" --format json)
    if [[ "$reply" =~ \"node-id\":\ *([0-9]+) ]]; then
        echo "$key: registered as node ${BASH_REMATCH[1]}"
    elif [[ "$reply" == *"Public key already in use"* ]]; then
        echo "$key: already registered"
    else
        echo "register-nodes.sh: registering $key failed: $reply" >&2
        exit 1
    fi
done
