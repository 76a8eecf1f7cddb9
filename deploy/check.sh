#!/usr/bin/env bash
# Validates deploy/ without a cluster:
#   1. renders deploy/kubernetes with `kubectl kustomize` (no API server needed) and checks
#      every object against the official Kubernetes OpenAPI schemas with
#      `kubernetes-validate --strict` (unknown fields are errors), for the oldest
#      Kubernetes these manifests support (1.30: the preStop sleep action on by default)
#      and the newest the validator knows;
#   2. takes idgate.toml out of the rendered ConfigMap, checks that the SPIFFE Workload API
#      socket it names is on the SPIFFE CSI driver's volume in the gateway container and
#      that every file it names is mounted there where it says, and runs it through
#      `idgate check` against placeholder files in a temporary directory (dummy secrets;
#      the Workload API address is checked, no agent is asked);
#   3. runs `systemd-analyze verify` on deploy/systemd/idgate.service, with its drop-ins
#      (idgate.service.d/: the SPIRE agent ordering), when systemd is here;
#   4. when a cluster is reachable, also `kubectl apply --dry-run=client -k`.
#
# `kubectl apply --dry-run=client` alone is no offline check: even in client mode kubectl
# asks the API server which resource types exist, and fails without one. Steps 1 and 2
# are its offline equivalent, and stricter (it does not validate against the schemas).
#
# Needs kubectl and python3; installs kubernetes-validate with pip when missing.
# The idgate binary: IDGATE_BIN (default target/debug/idgate).
set -euo pipefail
cd "$(dirname "$0")/.."

IDGATE_BIN="${IDGATE_BIN:-target/debug/idgate}"
OLDEST_KUBERNETES="1.30.0"

if ! command -v kubectl >/dev/null 2>&1; then
  echo "deploy/check: kubectl is needed (it renders the kustomization offline)" >&2
  exit 1
fi
if [ ! -x "$IDGATE_BIN" ]; then
  echo "deploy/check: no idgate binary at $IDGATE_BIN (build it, or set IDGATE_BIN)" >&2
  exit 1
fi
# pip puts console scripts beside the interpreter, which PATH may not name yet.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "deploy/check: installing kubernetes-validate"
  python3 -m pip install --quiet 'kubernetes-validate>=1.30'
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "deploy/check: rendering deploy/kubernetes"
kubectl kustomize deploy/kubernetes >"$tmp/rendered.yaml"

for version in "$OLDEST_KUBERNETES" ""; do
  echo "deploy/check: validating against the Kubernetes ${version:-newest known} schemas (strict)"
  kubernetes-validate --strict --quiet ${version:+--kubernetes-version "$version"} "$tmp/rendered.yaml"
done

# The configuration exactly as the pods get it. Its absolute paths are moved under
# $tmp/root, where placeholder files are made for them.
echo "deploy/check: checking idgate.toml against the pod's mounts"
python3 deploy/check-config.py "$tmp/rendered.yaml" "$tmp/root" "$tmp/idgate.toml" >"$tmp/files"

"$IDGATE_BIN" dev-pki --out "$tmp/pki" --trust-domain example.org >/dev/null
while read -r kind path; do
  mkdir -p "$(dirname "$path")"
  case "$kind" in
    svid_cert) cp "$tmp/pki/gateway.crt" "$path" ;;
    svid_key) (umask 077 && cp "$tmp/pki/gateway.key" "$path") ;;
    bundle | ca) cp "$tmp/pki/bundle.pem" "$path" ;;
    secret) (umask 077 && printf 'placeholder-%s\n' "$(basename "$path")" >"$path") ;;
    *)
      echo "deploy/check: unknown file kind $kind" >&2
      exit 1
      ;;
  esac
done <"$tmp/files"

# [state] names the cluster's Redis; the check opens a throwaway one instead: redis-server
# with TLS (the dev PKI's certificate, valid for 127.0.0.1) and the ACL file of redis.yaml,
# its password hash replaced by the placeholder password's, so its rules are parsed too.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "deploy/check: redis-server is needed (scripts/setup-test-deps.sh installs it)" >&2
  exit 1
fi
mkdir -p "$tmp/redis"
password_file="$(awk '$1 == "secret" && $2 ~ /redis-password$/ { print $2 }' "$tmp/files")"
python3 - "$tmp/rendered.yaml" "$password_file" >"$tmp/redis/users.acl" <<'PY'
import hashlib, re, sys, yaml
objects = [o for o in yaml.safe_load_all(open(sys.argv[1], encoding="utf-8")) if o]
acl = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "redis-acl")
text = acl["stringData"]["users.acl"]
# No password file: idgate check reports the [state] password; the ACL is still parsed.
if sys.argv[2]:
    password = open(sys.argv[2], encoding="utf-8").read().rstrip("\r\n")
    text = re.sub(r"#[0-9a-f]{64}", "#" + hashlib.sha256(password.encode()).hexdigest(), text)
print(text, end="")
PY
redis_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --bind 127.0.0.1 --port 0 --tls-port "$redis_port" \
  --tls-cert-file "$tmp/pki/gateway.crt" --tls-key-file "$tmp/pki/gateway.key" \
  --tls-ca-cert-file "$tmp/pki/bundle.pem" --tls-auth-clients no \
  --aclfile "$tmp/redis/users.acl" --save "" --appendonly no --dir "$tmp/redis" \
  >"$tmp/redis/log" 2>&1 &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do
  grep -q 'Ready to accept connections' "$tmp/redis/log" && break
  kill -0 "$redis_pid" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q 'Ready to accept connections' "$tmp/redis/log"; then
  cat "$tmp/redis/log" >&2
  echo "deploy/check: the throwaway Redis did not start (is redis.yaml's users.acl valid?)" >&2
  exit 1
fi
sed -i -E "s#\"rediss?://[^\"]*\"#\"rediss://127.0.0.1:$redis_port/0\"#g" "$tmp/idgate.toml"

echo "deploy/check: idgate check (Redis: a local one; vault: references: placeholder files)"
if ! "$IDGATE_BIN" check --config "$tmp/idgate.toml" 2>"$tmp/check.err"; then
  cat "$tmp/check.err" >&2
  exit 1
fi
cat "$tmp/check.err" >&2

if command -v systemd-analyze >/dev/null 2>&1; then
  echo "deploy/check: systemd-analyze verify deploy/systemd/idgate.service and its drop-ins"
  # verify wants the unit's binary to exist: point it at the one under test. It reads the
  # drop-ins of idgate.service.d/ beside the unit, as systemd would.
  mkdir -p "$tmp/systemd"
  sed "s#/usr/local/bin/idgate#$(realpath "$IDGATE_BIN")#g" deploy/systemd/idgate.service \
    >"$tmp/systemd/idgate.service"
  cp -r deploy/systemd/idgate.service.d "$tmp/systemd/"
  # It reports unknown or malformed settings as warnings and still exits 0: any line
  # about this unit is a failure here.
  if ! verify_out="$(systemd-analyze verify --man=no "$tmp/systemd/idgate.service" 2>&1)" ||
    grep -q 'idgate.service' <<<"$verify_out"; then
    echo "$verify_out" >&2
    echo "deploy/check: systemd-analyze verify found problems in deploy/systemd/idgate.service" >&2
    exit 1
  fi
else
  echo "deploy/check: systemd-analyze not found; the systemd unit is not verified"
fi

if kubectl cluster-info --request-timeout=5s >/dev/null 2>&1; then
  echo "deploy/check: a cluster is reachable: kubectl apply --dry-run=client -k deploy/kubernetes"
  kubectl apply --dry-run=client -k deploy/kubernetes >/dev/null
else
  echo "deploy/check: no cluster reachable; skipping kubectl apply --dry-run=client (the checks above are its offline equivalent)"
fi

echo "deploy/check: ok"
