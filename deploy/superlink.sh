#!/usr/bin/env bash
# Coordinator: start the consortium's SuperLink with TLS and SuperNode authentication.
#
#   TLS_DIR=/srv/fedunlearn/tls HOST=0.0.0.0 PORT=9092 deploy/superlink.sh
#
# TLS_DIR holds ca.crt, server.pem and server.key from
#   fedunlearn make-certs server --out "$TLS_DIR" --host <public name> --host <public IP>
# Only SuperNodes whose public keys were registered join:
#   flwr supernode register hospital-a.pub consortium --name hospital-a
# DATABASE keeps registrations and runs across SuperLink restarts (in memory if unset).
set -euo pipefail
: "${TLS_DIR:?set TLS_DIR to the folder made by fedunlearn make-certs server}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-9092}"
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
args=(--host "$HOST" --port "$PORT"
      --ssl-ca-certfile "$TLS_DIR/ca.crt" --ssl-certfile "$TLS_DIR/server.pem" --ssl-keyfile "$TLS_DIR/server.key"
      --enable-supernode-auth --disable-runtime-dependency-installation)
if [[ -n "${DATABASE:-}" ]]; then args+=(--database "$DATABASE"); fi
exec flower-superlink "${args[@]}"
