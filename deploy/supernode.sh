#!/usr/bin/env bash
# Hospital: start this site's SuperNode. Data, update history, deletion requests and receipts
# stay in DATA_ROOT and STATE_DIR on this machine; only model weights, corrections, metrics and
# receipts (with a hash of the ids) cross the network, over TLS.
#
#   SUPERLINK=superlink.consortium.example:9092 CA=/srv/fedunlearn/ca.crt \
#   KEY=/srv/fedunlearn/keys/hospital-a.key PARTITION_ID=0 NUM_PARTITIONS=3 \
#   STATE_DIR=/srv/fedunlearn/state DATA_ROOT=/srv/fedunlearn/data deploy/supernode.sh
#
# KEY comes from `fedunlearn make-certs node --out /srv/fedunlearn/keys --name hospital-a`;
# send only hospital-a.pub to the coordinator. PORT is this node's local runtime API
# (127.0.0.1 only; it must differ between SuperNodes on one machine).
set -euo pipefail
: "${SUPERLINK:?set SUPERLINK to host:port of the consortium SuperLink}"
: "${CA:?set CA to the consortium ca.crt}"
: "${KEY:?set KEY to this site private key (fedunlearn make-certs node)}"
: "${PARTITION_ID:?set PARTITION_ID (this site index, 0-based)}"
: "${NUM_PARTITIONS:?set NUM_PARTITIONS (number of sites)}"
: "${STATE_DIR:?set STATE_DIR (history, requests, receipts)}"
: "${DATA_ROOT:?set DATA_ROOT (this site dataset folder)}"
PORT="${PORT:-9094}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
mkdir -p "$STATE_DIR"
exec flower-supernode --superlink "$SUPERLINK" --root-certificates "$CA" --auth-supernode-private-key "$KEY" \
    --port "$PORT" \
    --node-config "partition-id=$PARTITION_ID num-partitions=$NUM_PARTITIONS state-dir=\"$STATE_DIR\" data-root=\"$DATA_ROOT\""
