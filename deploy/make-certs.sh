#!/usr/bin/env bash
# Make the TLS certificates and SuperNode authentication keys of a feddat-flwr deployment.
#
#   deploy/make-certs.sh OUT_DIR [HOSTNAME_OR_IP...]
#   NUM_SUPERNODES=5 deploy/make-certs.sh certs superlink.example.org 10.0.0.5
#
# Writes into OUT_DIR (created; refused if it already holds a CA, so nothing is overwritten):
#   ca.crt, ca.key              a private CA (keep ca.key on the admin machine)
#   server.pem, server.key      the SuperLink's certificate, signed by the CA, valid for
#                               localhost, 127.0.0.1 and every HOSTNAME_OR_IP given
#   supernode-<i>.key / .pub    one ECDSA P-384 key pair per SuperNode, i = 0..NUM_SUPERNODES-1
#                               (default 3): OpenSSH format, which is what
#                               `flower-supernode --auth-supernode-private-key` (private key) and
#                               `flwr supernode register` (public key) read.
# Needs openssl and ssh-keygen (package openssh-client). Certificates are valid for DAYS (default 365).
set -euo pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
out=$1
shift
num_nodes=${NUM_SUPERNODES:-3}
days=${DAYS:-365}

if [[ -e "$out/ca.crt" ]]; then
    echo "make-certs.sh: $out/ca.crt exists; refusing to overwrite (use a new directory)" >&2
    exit 1
fi
mkdir -p "$out"
umask 077

san="DNS:localhost,IP:127.0.0.1"
for host in "$@"; do
    if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
        san+=",IP:$host"
    else
        san+=",DNS:$host"
    fi
done

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days "$days" \
    -subj "/O=feddat-flwr/CN=feddat-flwr CA" -keyout "$out/ca.key" -out "$out/ca.crt" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 \
    -subj "/O=feddat-flwr/CN=${1:-localhost}" -keyout "$out/server.key" -out "$out/server.csr" 2>/dev/null
openssl x509 -req -sha256 -days "$days" -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
    -CAcreateserial -out "$out/server.pem" \
    -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san") \
    2>/dev/null
rm -f "$out/server.csr" "$out/ca.srl"
chmod 644 "$out/ca.crt" "$out/server.pem"

for ((i = 0; i < num_nodes; i++)); do
    ssh-keygen -q -t ecdsa -b 384 -N '' -C "feddat-flwr supernode-$i" -f "$out/supernode-$i.key"
    mv "$out/supernode-$i.key.pub" "$out/supernode-$i.pub"
    chmod 644 "$out/supernode-$i.pub"
done

echo "make-certs.sh: wrote CA, SuperLink certificate (SAN $san) and $num_nodes SuperNode key pairs to $out"
