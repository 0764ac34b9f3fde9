#!/usr/bin/env bash
# The foreign-client check: a Python client generated from kv.proto by grpcio-tools checks,
# against a real local cluster, every status code kv.proto's table promises (check.py says
# which inputs). Creates a throwaway venv, pip-installs grpcio-tools, generates the client,
# builds the kv binary (unless KV_BIN names one), starts `kv local up --base-port 0 --chaos`
# in a temporary folder, runs check.py, and stops the cluster whatever happens.
#
# Needs python3 (with venv) and access to PyPI. Usage: tests/foreign/run.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# Pinned so that every run generates the same client.
GRPCIO_TOOLS_VERSION="${GRPCIO_TOOLS_VERSION:-1.85.1}"

work="$(mktemp -d)"
kv="${KV_BIN:-}"
cleanup() {
  if [ -n "$kv" ] && [ -e "$work/cluster/cluster.json" ]; then
    "$kv" --dir "$work/cluster" local down --purge >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "$kv" ]; then
  echo "== building the kv binary"
  (cd "$root" && cargo build --quiet -p kv-cli --bin kv)
  target="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
  kv="$target/debug/kv"
fi

echo "== venv with grpcio-tools $GRPCIO_TOOLS_VERSION"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "grpcio-tools==$GRPCIO_TOOLS_VERSION"

echo "== generating the Python client from kv.proto"
mkdir -p "$work/gen"
"$work/venv/bin/python" -m grpc_tools.protoc -I "$root/kv-proto/proto" \
  --python_out="$work/gen" --grpc_python_out="$work/gen" "$root/kv-proto/proto/kv.proto"

echo "== starting a local cluster"
"$kv" --dir "$work/cluster" local up --base-port 0 --chaos

echo "== checking kv.proto's status codes"
"$work/venv/bin/python" "$here/check.py" --gen "$work/gen" --kv "$kv" --dir "$work/cluster"
