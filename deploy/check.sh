#!/usr/bin/env bash
# Validates deploy/ without a cluster. For each of the two kustomizations, deploy/kubernetes
# (the Deployment) and deploy/kubernetes-audit (the StatefulSet with the audit trail):
#   1. renders it with `kubectl kustomize` (no API server needed) and checks every object
#      against the official Kubernetes OpenAPI schemas with `kubernetes-validate --strict`
#      (unknown fields are errors), for the oldest Kubernetes these manifests support
#      (1.30: the preStop sleep action on by default) and the newest the validator knows;
#   2. checks that every container image is pinned by digest, takes idgate.toml out of the
#      rendered ConfigMap, checks that the SPIFFE Workload API socket it names is on the
#      SPIFFE CSI driver's volume in the gateway container, that every file it names is
#      mounted there where it says, and that every directory it writes to (the audit
#      trail, SIEM file sinks, incidents, a redb file) is on a writable mount, persistent
#      and the replica's own where the gateway keeps records there (check-config.py);
#   3. runs that configuration through `idgate check` against placeholder files in a
#      temporary directory (dummy secrets, a dev PKI, audit keys made for the check).
#      `idgate check` loads every file and secret, but checks the Workload API address
#      without asking an agent and opens no connection to Redis (but to read [api_keys]
#      kept there). So the Redis side is checked here instead: a throwaway redis-server
#      with TLS and the ACL file of the rendered redis-acl Secret, which the gateway's
#      [state] username and password must open, reading and writing keys and channels
#      under its [state] prefix and nothing outside it.
# Then:
#   4. checks that deploy/kubernetes-audit repeats deploy/kubernetes's pod and idgate.toml
#      but for what the trail needs (check-variant.py), and runs the tests of these checks
#      (check-config-test.py: each change that would break a running gateway is refused);
#   5. runs `systemd-analyze verify` on deploy/systemd/idgate.service, with its drop-ins
#      (idgate.service.d/: the SPIRE agent ordering), when systemd is here;
#   6. when a cluster is reachable, also `kubectl apply --dry-run=client -k` of both.
#
# `kubectl apply --dry-run=client` alone is no offline check: even in client mode kubectl
# asks the API server which resource types exist, and fails without one. Steps 1 to 4
# are its offline equivalent, and stricter (it does not validate against the schemas).
#
# Needs kubectl, python3, redis-server and redis-cli; installs kubernetes-validate with
# pip when missing. The idgate binary: IDGATE_BIN (default target/debug/idgate).
set -euo pipefail
cd "$(dirname "$0")/.."

IDGATE_BIN="${IDGATE_BIN:-target/debug/idgate}"
OLDEST_KUBERNETES="1.30.0"
KUSTOMIZATIONS=(deploy/kubernetes deploy/kubernetes-audit)

if ! command -v kubectl >/dev/null 2>&1; then
  echo "deploy/check: kubectl is needed (it renders the kustomization offline)" >&2
  exit 1
fi
if [ ! -x "$IDGATE_BIN" ]; then
  echo "deploy/check: no idgate binary at $IDGATE_BIN (build it, or set IDGATE_BIN)" >&2
  exit 1
fi
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
  echo "deploy/check: redis-server and redis-cli are needed (scripts/setup-test-deps.sh installs them)" >&2
  exit 1
fi
# pip puts console scripts beside the interpreter, which PATH may not name yet.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "deploy/check: installing kubernetes-validate"
  python3 -m pip install --quiet 'kubernetes-validate>=1.30'
fi

tmp="$(mktemp -d)"
redis_pid=""
trap '[ -z "$redis_pid" ] || kill "$redis_pid" 2>/dev/null || true; rm -rf "$tmp"' EXIT

# The placeholders' material: a dev PKI for certificates and keys, and an audit signing
# key with its public key and an encryption key, as `idgate audit keygen` makes them.
"$IDGATE_BIN" dev-pki --out "$tmp/pki" --trust-domain example.org >/dev/null
"$IDGATE_BIN" audit keygen --out "$tmp/audit-keys" --encryption >/dev/null

# Starts a throwaway TLS Redis with the ACL file of the rendered redis-acl Secret, its
# password hash replaced by the placeholder password's, so that its rules are parsed and
# the gateway's user can log in with the placeholder. Sets redis_pid and redis_port.
start_redis() {
  local rendered="$1" password_file="$2" dir="$3"
  mkdir -p "$dir"
  python3 - "$rendered" "$password_file" >"$dir/users.acl" <<'PY'
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
    --aclfile "$dir/users.acl" --save "" --appendonly no --dir "$dir" \
    >"$dir/log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 50); do
    grep -q 'Ready to accept connections' "$dir/log" && break
    kill -0 "$redis_pid" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q 'Ready to accept connections' "$dir/log"; then
    cat "$dir/log" >&2
    echo "deploy/check: the throwaway Redis did not start (is the redis-acl Secret's users.acl valid?)" >&2
    exit 1
  fi
}

stop_redis() {
  kill "$redis_pid" 2>/dev/null || true
  wait "$redis_pid" 2>/dev/null || true
  redis_pid=""
}

# The gateway's Redis user, as [state] configures it, must be let in by the ACL and may
# read and write keys and channels under [state] prefix (scripts included), and nothing
# outside it. Sets redis_user, redis_prefix, redis_ca, redis_password_file for redis_cli.
probe_redis() {
  local config="$1" out
  redis_password_file="$2"
  read -r redis_user redis_prefix redis_ca < <(python3 - "$config" <<'PY'
import sys, tomllib
state = tomllib.load(open(sys.argv[1], "rb")).get("state", {})
print(state.get("username", "default"), state.get("prefix", "idgate:"), state.get("ca", "-"))
PY
)
  [ "$redis_ca" != "-" ] || redis_ca="$tmp/pki/bundle.pem"
  local key="${redis_prefix}deploy-check"
  redis_allows SET "$key" 1 PX 10000
  redis_allows EVAL "return redis.call('GET', KEYS[1])" 1 "$key"
  redis_allows PUBLISH "$key" 1
  redis_allows DEL "$key"
  out="$(redis_cli GET deploy-check-outside-the-prefix || true)"
  if ! grep -q 'NOPERM' <<<"$out"; then
    echo "$out" >&2
    echo "deploy/check: the Redis ACL (the redis-acl Secret of secrets.yaml) lets [state] username \"$redis_user\" read keys outside its prefix \"$redis_prefix\"" >&2
    exit 1
  fi
}

redis_cli() {
  REDISCLI_AUTH="$(cat "$redis_password_file")" redis-cli --no-auth-warning --tls \
    --cacert "$redis_ca" -h 127.0.0.1 -p "$redis_port" --user "$redis_user" "$@" 2>&1
}

redis_allows() {
  local out
  if ! out="$(redis_cli "$@")" || grep -qE '^(\(error\) )?[A-Z]+ ' <<<"$out"; then
    echo "$out" >&2
    echo "deploy/check: the Redis ACL (the redis-acl Secret of secrets.yaml) does not let [state] username \"$redis_user\" run $1 under its prefix \"$redis_prefix\"" >&2
    exit 1
  fi
}

check_kustomization() {
  local dir="$1" out
  out="$tmp/$(basename "$dir")"
  mkdir -p "$out"

  echo "deploy/check: rendering $dir"
  # deploy/kubernetes-audit keeps to the fields older kustomize versions know, which newer
  # ones call deprecated (see its kustomization.yaml): those two warnings are expected.
  if ! kubectl kustomize "$dir" >"$out/rendered.yaml" 2>"$out/kustomize.err"; then
    cat "$out/kustomize.err" >&2
    exit 1
  fi
  grep -v -E "^# Warning: '(bases|patchesStrategicMerge)' is deprecated" "$out/kustomize.err" >&2 || true

  for version in "$OLDEST_KUBERNETES" ""; do
    echo "deploy/check: validating $dir against the Kubernetes ${version:-newest known} schemas (strict)"
    kubernetes-validate --strict --quiet ${version:+--kubernetes-version "$version"} "$out/rendered.yaml"
  done

  # The configuration exactly as the pods get it. Its absolute paths are moved under
  # $out/root, where placeholder files are made for them.
  echo "deploy/check: checking $dir's images, and its idgate.toml against the pod's mounts"
  python3 deploy/check-config.py "$out/rendered.yaml" "$out/root" "$out/idgate.toml" >"$out/files"

  while read -r kind path; do
    mkdir -p "$(dirname "$path")"
    case "$kind" in
      svid_cert | cert) cp "$tmp/pki/gateway.crt" "$path" ;;
      svid_key | key) (umask 077 && cp "$tmp/pki/gateway.key" "$path") ;;
      bundle | ca) cp "$tmp/pki/bundle.pem" "$path" ;;
      # 32 random bytes in base64: an encryption key, and long enough for any HMAC key.
      secret) (umask 077 && head -c 32 /dev/urandom | base64 -w0 >"$path") ;;
      audit_signing_key) (umask 077 && cp "$tmp/audit-keys/audit-signing.pem" "$path") ;;
      audit_public_key) cp "$tmp/audit-keys/audit-signing.pub" "$path" ;;
      audit_encryption_key) (umask 077 && cp "$tmp/audit-keys/audit-encryption.key" "$path") ;;
      dir) mkdir -p "$path" ;;
      *)
        echo "deploy/check: unknown file kind $kind" >&2
        exit 1
        ;;
    esac
  done <"$out/files"

  local password_file
  password_file="$(awk '$1 == "secret" && $2 ~ /redis-password$/ { print $2 }' "$out/files")"
  start_redis "$out/rendered.yaml" "$password_file" "$out/redis"
  if [ -n "$password_file" ]; then
    echo "deploy/check: the Redis ACL lets [state]'s user in, under its prefix only"
    probe_redis "$out/idgate.toml" "$password_file"
  fi
  # [state] names the cluster's Redis: pointed at the throwaway one, so that nothing the
  # check may read from Redis comes from elsewhere.
  sed -i -E "s#\"rediss?://[^\"]*\"#\"rediss://127.0.0.1:$redis_port/0\"#g" "$out/idgate.toml"

  echo "deploy/check: idgate check of $dir's idgate.toml (vault: references: placeholder files)"
  if ! "$IDGATE_BIN" check --config "$out/idgate.toml" 2>"$out/check.err"; then
    cat "$out/check.err" >&2
    exit 1
  fi
  cat "$out/check.err" >&2
  stop_redis
}

for dir in "${KUSTOMIZATIONS[@]}"; do
  check_kustomization "$dir"
done

echo "deploy/check: deploy/kubernetes-audit repeats deploy/kubernetes but for the audit trail"
python3 deploy/check-variant.py "$tmp/kubernetes/rendered.yaml" "$tmp/kubernetes-audit/rendered.yaml"

echo "deploy/check: the tests of check-config.py and check-variant.py"
python3 deploy/check-config-test.py "$tmp/kubernetes/rendered.yaml" \
  "$tmp/kubernetes-audit/rendered.yaml"

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
  for dir in "${KUSTOMIZATIONS[@]}"; do
    echo "deploy/check: a cluster is reachable: kubectl apply --dry-run=client -k $dir"
    kubectl apply --dry-run=client -k "$dir" >/dev/null
  done
else
  echo "deploy/check: no cluster reachable; skipping kubectl apply --dry-run=client (the checks above are its offline equivalent)"
fi

echo "deploy/check: ok"
