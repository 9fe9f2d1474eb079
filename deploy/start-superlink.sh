#!/usr/bin/env bash
# Start the feddat-flwr SuperLink: TLS, SuperNode authentication, no runtime dependency installs.
# Runs in the foreground (exec), e.g. as a container's entrypoint or under systemd.
#
#   deploy/start-superlink.sh [extra flower-superlink flags...]
#
# Settings (environment variables, defaults in brackets):
#   SUPERLINK_HOST      address to bind [0.0.0.0]
#   SUPERLINK_PORT      the one HTTP port for SuperNodes (Fleet API) and `flwr` (Control API) [8000]
#   CERTS_DIR           directory from deploy/make-certs.sh holding ca.crt, server.pem, server.key [certs]
#   SUPERLINK_DATABASE  SQLite file of the SuperLink's state (runs, registered SuperNodes), so that
#                       registrations survive a restart; ":flwr-in-memory:" keeps it in RAM [superlink.db]
#   INSECURE=1          no TLS and no SuperNode authentication (local experiments only) [0]
#   NODE_AUTH=0         TLS but no SuperNode authentication [1]
# The ServerApp runs on this machine in a child process started from the current directory:
# give `output-dir` as an absolute path here (results are written on the SuperLink machine).
set -euo pipefail

certs=${CERTS_DIR:-certs}
args=(--host "${SUPERLINK_HOST:-0.0.0.0}" --port "${SUPERLINK_PORT:-8000}"
      --database "${SUPERLINK_DATABASE:-superlink.db}" --disable-runtime-dependency-installation)
if [[ "${INSECURE:-0}" == 1 ]]; then
    args+=(--insecure)
else
    args+=(--ssl-ca-certfile "$certs/ca.crt" --ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key")
    if [[ "${NODE_AUTH:-1}" == 1 ]]; then
        args+=(--enable-supernode-auth)
    fi
fi

# Offline and quiet unless the caller says otherwise (deploy/offline.env).
while IFS='=' read -r key value; do
    [[ -z "$key" || "$key" == \#* ]] || export "$key=${!key:-$value}"
done < "$(dirname "${BASH_SOURCE[0]}")/offline.env"

exec flower-superlink "${args[@]}" "$@"
