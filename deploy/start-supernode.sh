#!/usr/bin/env bash
# Start one feddat-flwr SuperNode (one client): TLS to the SuperLink, authenticated with its own
# key, its own dataset (or a partition of the embedded one) and a durable state directory. Runs in
# the foreground (exec).
#
#   DATA_PATH=/data/my-vqa deploy/start-supernode.sh [extra flower-supernode flags...]
#   PARTITION_ID=0 NUM_PARTITIONS=3 deploy/start-supernode.sh      # the embedded easy-VQA
#
# Settings (environment variables, defaults in brackets):
#   SUPERLINK_ADDRESS   host:port of the SuperLink [127.0.0.1:8000]; the host must be a name in
#                       the SuperLink certificate (deploy/make-certs.sh OUT_DIR HOSTNAME...)
#   DATA_PATH           this client's own dataset: a directory saved with datasets' save_to_disk
#                       (format: README, "Bring your own data"); node-config data-path. With it,
#                       PARTITION_ID/NUM_PARTITIONS are optional (PARTITION_ID then keys the
#                       client's results; without it the node id does)
#   PARTITION_ID        this client's partition of the embedded data, 0..NUM_PARTITIONS-1
#                       (required without DATA_PATH)
#   NUM_PARTITIONS      number of clients (required without DATA_PATH)
#   STATE_DIR           where the client's private state (local adapter, head) is mirrored after
#                       every round, <STATE_DIR>/run-<run key>/round-<r>; a restarted SuperNode resumes from
#                       it. Keep it on a volume. [state]
#   CERTS_DIR           directory holding ca.crt (and this node's key) [certs]
#   SUPERNODE_KEY       this node's private key [$CERTS_DIR/supernode-$PARTITION_ID.key] (required
#                       with DATA_PATH and no PARTITION_ID); its public
#                       key must be registered first (deploy/register-nodes.sh)
#   SUPERNODE_HOST, SUPERNODE_PORT  the local Runtime API through which each ClientApp process
#                       talks to this SuperNode; distinct ports for nodes on one host [127.0.0.1, 9094]
#   FEDDAT_CACHE        cache of the default foundation model [~/.cache/feddat-flwr]
#   FEDDAT_EXECUTOR     warm: one long-lived process runs every message of this node (imports,
#                       model and data once); stock: Flower's fresh flwr-clientapp per message [warm]
#   FEDDAT_NODE_POLL    cap in seconds on the SuperNode's idle waits (Flower: 3 s); 0 keeps
#                       Flower's [0.2]   (both: feddat_flwr/flower/supernode.py, docs/deployment.md)
#   INSECURE=1          no TLS and no authentication (local experiments only) [0]
#   NODE_AUTH=0         TLS but no authentication key (SuperLink started with NODE_AUTH=0) [1]
set -euo pipefail

certs=${CERTS_DIR:-certs}
state_dir=${STATE_DIR:-state}
mkdir -p "$state_dir"
state_dir=$(cd "$state_dir" && pwd)  # ClientApps run elsewhere: the node config needs an absolute path
node_config="state-dir=\"$state_dir\""
if [[ -n "${DATA_PATH:-}" ]]; then
    [[ -d "$DATA_PATH" ]] || { echo "DATA_PATH $DATA_PATH is not a directory" >&2; exit 2; }
    node_config+=" data-path=\"$(cd "$DATA_PATH" && pwd)\""
else
    : "${PARTITION_ID:?set DATA_PATH (the dataset of this node) or PARTITION_ID (0..NUM_PARTITIONS-1)}"
    : "${NUM_PARTITIONS:?set NUM_PARTITIONS (the number of clients)}"
fi
[[ -n "${PARTITION_ID:-}" ]] && node_config+=" partition-id=$PARTITION_ID"
[[ -n "${NUM_PARTITIONS:-}" ]] && node_config+=" num-partitions=$NUM_PARTITIONS"

args=(--superlink "${SUPERLINK_ADDRESS:-127.0.0.1:8000}"
      --host "${SUPERNODE_HOST:-127.0.0.1}" --port "${SUPERNODE_PORT:-9094}"
      --node-config "$node_config")
if [[ "${INSECURE:-0}" == 1 ]]; then
    args+=(--insecure)
else
    args+=(--root-certificates "$certs/ca.crt")
    if [[ "${NODE_AUTH:-1}" == 1 ]]; then
        args+=(--auth-supernode-private-key "${SUPERNODE_KEY:-$certs/supernode-$PARTITION_ID.key}")
    fi
fi

# Offline and quiet unless the caller says otherwise (deploy/offline.env).
while IFS='=' read -r key value; do
    [[ -z "$key" || "$key" == \#* ]] || export "$key=${!key:-$value}"
done < "$(dirname "${BASH_SOURCE[0]}")/offline.env"

exec feddat-supernode "${args[@]}" "$@"
