#!/bin/sh
# Starts `kv server` in a Kubernetes StatefulSet pod: the node's name is the pod's name
# (kv-0, kv-1, ...) and the peer list is derived from the pod ordinals 0..KV_REPLICAS-1 and
# the headless Service's stable DNS names, so every pod computes the same list.
# With KV_ENTRYPOINT_PRINT=1 it prints the command instead of running it (the manifest test
# uses that). Arguments are passed on to `kv server`.
set -eu

: "${KV_REPLICAS:?set KV_REPLICAS to the StatefulSet replica count}"
: "${KV_SERVICE:?set KV_SERVICE to the headless Service name}"
: "${KV_NAMESPACE:?set KV_NAMESPACE (downward API: metadata.namespace)}"
KV_CLIENT_PORT="${KV_CLIENT_PORT:-7001}"
KV_PEER_PORT="${KV_PEER_PORT:-7002}"
KV_HTTP_PORT="${KV_HTTP_PORT:-8080}"
KV_DATA_DIR="${KV_DATA_DIR:-/var/lib/kv}"
KV_CLUSTER_DOMAIN="${KV_CLUSTER_DOMAIN:-cluster.local}"
POD_NAME="${POD_NAME:-$(hostname)}"

# The StatefulSet names pods <set>-<ordinal>; the set's name is the pod name minus the ordinal.
ordinal="${POD_NAME##*-}"
set_name="${POD_NAME%-*}"
case "$ordinal" in
  ''|*[!0-9]*) echo "kv-entrypoint: pod name $POD_NAME does not end in -<ordinal>" >&2; exit 2 ;;
esac
if [ "$ordinal" -ge "$KV_REPLICAS" ]; then
  echo "kv-entrypoint: pod $POD_NAME has ordinal $ordinal but KV_REPLICAS is $KV_REPLICAS; the peer list is fixed at creation (see docs/operations.md)" >&2
  exit 2
fi

peers=""
i=0
while [ "$i" -lt "$KV_REPLICAS" ]; do
  host="$set_name-$i.$KV_SERVICE.$KV_NAMESPACE.svc.$KV_CLUSTER_DOMAIN"
  peers="$peers${peers:+,}$set_name-$i=$host:$KV_CLIENT_PORT/$host:$KV_PEER_PORT"
  i=$((i + 1))
done

set -- kv server \
  --name "$POD_NAME" \
  --peers "$peers" \
  --listen "0.0.0.0:$KV_CLIENT_PORT" \
  --peer-listen "0.0.0.0:$KV_PEER_PORT" \
  --http-listen "0.0.0.0:$KV_HTTP_PORT" \
  --data-dir "$KV_DATA_DIR" \
  "$@"

if [ "${KV_ENTRYPOINT_PRINT:-}" = 1 ]; then
  printf '%s\n' "$*"
  exit 0
fi
exec "$@"
