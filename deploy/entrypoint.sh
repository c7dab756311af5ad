#!/bin/sh
# The image's entrypoint on Kubernetes: renders this pod's node config from
# the ConfigMap's template, then runs the node.
#
#   runner-storage-entrypoint [serve]  render, then exec runner-storage serve --config RENDERED
#   runner-storage-entrypoint render   render only, and print the rendered file's path
#   runner-storage-entrypoint probe    exit 0 when the node, asked over its own port (TLS and
#                                      token as configured), knows a leader: the TLS overlay's
#                                      probe, since the kubelet's gRPC probes speak no TLS
#
# The template is a node config without node_id and [[peers]]; this adds
#   node_id = ORDINAL + 1, where POD_NAME is NAME-ORDINAL (a StatefulSet pod);
#   [tls] with RUNNER_STORAGE_TLS_DIR/{ca.crt,tls.crt,tls.key} when that is set
#     (the keys of a kubernetes.io/tls Secret with its CA, as cert-manager writes it);
#   [[peers]] NAME-I.SERVICE.NAMESPACE.svc.DOMAIN:PORT for I < RUNNER_STORAGE_INITIAL_MEMBERS,
#     PORT the template's listen port. A pod of a higher ordinal gets none: it starts
#     empty and waits for `ctl members add` (deploy/README.md).
#
# Environment: POD_NAME, POD_NAMESPACE (downward API), RUNNER_STORAGE_SERVICE (the
# headless Service), RUNNER_STORAGE_INITIAL_MEMBERS, RUNNER_STORAGE_CLUSTER_DOMAIN
# (default cluster.local), RUNNER_STORAGE_TLS_DIR (optional), RUNNER_STORAGE_CONFIG_TEMPLATE,
# RUNNER_STORAGE_CONFIG (the rendered file), RUNNER_STORAGE_BIN.
set -eu

bin=${RUNNER_STORAGE_BIN:-/usr/local/bin/runner-storage}
template=${RUNNER_STORAGE_CONFIG_TEMPLATE:-/etc/runner-storage/template/node.toml}
config=${RUNNER_STORAGE_CONFIG:-/run/runner-storage/node.toml}

die() { echo "runner-storage-entrypoint: $*" >&2; exit 1; }
is_number() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }

render() {
  pod=${POD_NAME:?POD_NAME must be the pod name (downward API metadata.name)}
  namespace=${POD_NAMESPACE:?POD_NAMESPACE must be the pod namespace (downward API metadata.namespace)}
  service=${RUNNER_STORAGE_SERVICE:?RUNNER_STORAGE_SERVICE must name the headless Service}
  members=${RUNNER_STORAGE_INITIAL_MEMBERS:?RUNNER_STORAGE_INITIAL_MEMBERS must be the initial cluster size}
  domain=${RUNNER_STORAGE_CLUSTER_DOMAIN:-cluster.local}
  set_name=${pod%-*}
  ordinal=${pod##*-}
  if ! is_number "$ordinal" || [ "$set_name" = "$pod" ]; then die "POD_NAME $pod does not end in -ORDINAL"; fi
  if ! is_number "$members" || [ "$members" -lt 1 ]; then
    die "RUNNER_STORAGE_INITIAL_MEMBERS $members is not a positive number"
  fi
  [ -r "$template" ] || die "cannot read the config template $template"
  if grep -Eq '^[[:space:]]*(node_id[[:space:]]*=|\[\[peers\]\])' "$template"; then
    die "$template sets node_id or [[peers]]: leave them out, this script writes them"
  fi
  if [ -n "${RUNNER_STORAGE_TLS_DIR:-}" ] && grep -Eq '^[[:space:]]*\[tls\]' "$template"; then
    die "$template has a [tls] table and RUNNER_STORAGE_TLS_DIR is set: use one of them"
  fi
  port=$(sed -n 's/^listen[[:space:]]*=[[:space:]]*"[^"]*:\([0-9][0-9]*\)".*/\1/p' "$template")
  [ -n "$port" ] || die "$template has no listen = \"ADDRESS:PORT\" line"
  mkdir -p "$(dirname "$config")"
  {
    echo "# Rendered by runner-storage-entrypoint for pod $pod from $template."
    echo "node_id = $((ordinal + 1))"
    cat "$template"
    echo
    if [ -n "${RUNNER_STORAGE_TLS_DIR:-}" ]; then
      tls=$RUNNER_STORAGE_TLS_DIR
      printf '[tls]\nca = "%s/ca.crt"\ncert = "%s/tls.crt"\nkey = "%s/tls.key"\n' "$tls" "$tls" "$tls"
    fi
    if [ "$ordinal" -lt "$members" ]; then
      i=0
      while [ "$i" -lt "$members" ]; do
        printf '[[peers]]\nid = %d\naddress = "%s-%d.%s.%s.svc.%s:%s"\n' \
          $((i + 1)) "$set_name" "$i" "$service" "$namespace" "$domain" "$port"
        i=$((i + 1))
      done
    fi
  } >"$config.tmp"
  mv "$config.tmp" "$config"
}

# The value of the first `KEY = "VALUE"` line of the rendered config.
value() { sed -n "s/^$1[[:space:]]*=[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" "$config" | head -n 1; }

probe() {
  [ -r "$config" ] || exit 1
  port=$(value listen | sed 's/.*://')
  ca=$(value ca)
  token_file=$(value auth_token_file)
  set -- --endpoints "localhost:$port"
  if [ -n "$ca" ]; then set -- "$@" --tls-ca "$ca"; fi
  if [ -n "$token_file" ]; then
    RUNNER_STORAGE_TOKEN=$(cat "$token_file")
    export RUNNER_STORAGE_TOKEN
  fi
  # Bounded below the probe's timeoutSeconds, so the kubelet never has to
  # kill this script and leave the client behind.
  timeout 3 "$bin" ctl "$@" status --json | grep -q '"leader_id": [1-9]'
}

case ${1:-serve} in
  serve)
    render
    exec "$bin" serve --config "$config"
    ;;
  render)
    render
    echo "$config"
    ;;
  probe) probe ;;
  *) die "usage: runner-storage-entrypoint [serve|render|probe]" ;;
esac
