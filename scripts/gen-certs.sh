#!/usr/bin/env bash
# Generates a test CA and node certificates for a local cluster, with openssl.
#
#   scripts/gen-certs.sh DIR [NODE_NAME ...]      (default names: node1 node2 node3)
#
# Writes DIR/ca.pem, DIR/ca-key.pem and, per name, DIR/NAME.pem and
# DIR/NAME-key.pem. Node certificates are valid for 127.0.0.1, ::1 and
# localhost (and for 10.77.0.1-9, the chaos lab's addresses), for both server
# and client use (peers authenticate each other with them). For tests and
# local clusters only: the CA key sits next to the certificates.
set -euo pipefail
dir=${1:?usage: gen-certs.sh DIR [NODE_NAME ...]}
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(node1 node2 node3)
command -v openssl >/dev/null || { echo "gen-certs.sh: openssl not found (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
if [ ! -f ca.pem ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=runner-storage test CA" \
    -keyout ca-key.pem -out ca.pem 2>/dev/null
fi
san="IP:127.0.0.1,IP:::1,DNS:localhost"
for i in $(seq 1 9); do san="$san,IP:10.77.0.$i"; done
for name in "${names[@]}"; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$name" -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$san" >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
done
echo "certificates in $dir: ca.pem ${names[*]/%/.pem}"
