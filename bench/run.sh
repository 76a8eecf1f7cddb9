#!/usr/bin/env bash
# Benchmark idgate against nginx and HAProxy on this machine.
#
# Each proxy terminates mutual TLS on loopback, sets the `x-api-key` header and
# forwards to the same fixed upstream (a separate nginx returning a small JSON
# body, or a ~0.5 KB identity-verification decision). All three run one worker
# and, by default, log every request as they ship: idgate its access log,
# nginx and HAProxy to a file. The script first measures each proxy's memory at
# start and with MEM_CONNS idle mTLS connections held open, then oha drives
# each proxy, over 64 keep-alive connections and with a new connection per
# request, in interleaved rounds. See bench/README.md.
#
# Usage: bench/run.sh [all|throughput|memory]   (from anywhere; tunables below, as env vars)
#
#   all (default)  memory first, then the load runs
#   throughput     only the load runs (requests per second, latency), with ratios to nginx
#                  and HAProxy: for a quiet machine, since other work skews them
#   memory         only VmRSS at start and per idle connection (oha is not needed)
#
#   DURATION=10s      length of one measured oha run (oha -z syntax: 500ms, 10s, 1m)
#   ROUNDS=3          interleaved rounds per mode; the table shows the median
#   CONNS=64          concurrent connections (oha -c), in both modes
#   WARMUP=2s         unmeasured oha run per proxy before each mode ("0" to skip)
#   PAUSE=1           seconds of idle between two runs
#   MODES="keepalive newconn"
#   RESPONSE=both     small (11-byte JSON), decision (~0.5 KB decision JSON) or both
#   IDGATE_LOG=on     on: idgate's defaults (access log on); off: `[log] level = "warn"`
#                     (no access log). Read by this script, never passed to idgate.
#   PEER_LOG=$IDGATE_LOG  on: nginx and HAProxy log every request to a file; off: no logs
#   CHAIN=bare        bare: idgate does what the peers do (mTLS, inject the key, log);
#                     full: idgate also requires an API key, decides two rate limits kept in
#                     a local redis-server and checks object ownership on the decision route
#                     (the peers still do bare mTLS with their logs)
#   EVIDENCE=off      on: idgate also writes its audit trail ([audit], defaults: hash chain,
#                     checkpoints signed, fsync in batches) and masks the decision answer
#                     (a masking profile: a pseudonym, a date cut to the year, a redaction);
#                     audit or masking: only that half, to see what each costs
#   LIMIT_BURST=      with CHAIN=full, the limits' burst (default: their count, 500000);
#                     under 16 a limit is not leased and Redis decides every request
#   REPLICAS=1        with CHAIN=full, 2 also measures two idgate processes sharing that
#                     Redis (two oha runs at once, CONNS/2 each) against one
#   MEM_CONNS=2000    idle mTLS connections held open for the memory figure ("0" to skip;
#                     0 by default with CHAIN=full)
#   PROXIES="idgate nginx haproxy"
#   IDGATE_BIN=target/release/idgate   built with `cargo build --release -p idgate` if missing
#   PKI=idgate        idgate: `idgate dev-pki`; openssl: generate with openssl;
#                     or a directory holding bundle.pem gateway.{crt,key} client.{crt,key}
#   OUT_DIR=bench/out work files, raw oha JSON and the markdown summary (latest.md)
#   OHA_THREADS=$(nproc)  oha's runtime threads
#   TASKSET_OHA=, TASKSET_PROXY=  optional CPU lists (taskset -c) for oha and the proxies
#   TASKSET_UPSTREAM=  optional CPU list for the fixed upstream and Redis (the world outside
#                     the proxy; unset, they run where the scheduler puts them)
#   REQUESTS=         a number: each measured oha run sends exactly that many requests
#                     (oha -n) instead of running for DURATION (used by instructions.sh)
#   PROXY_WRAP=       a command the proxies under test are started under, such as
#                     `valgrind --tool=callgrind ...` (used by instructions.sh); they are
#                     then given 120 s, not 5, to exit on TERM
set -euo pipefail

WHAT=${1:-all}
case $WHAT in
  all | throughput | memory) ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) echo "usage: bench/run.sh [all|throughput|memory] (see bench/README.md)" >&2; exit 2 ;;
esac
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-2s}
PAUSE=${PAUSE:-1}
MODES=${MODES:-keepalive newconn}
RESPONSE=${RESPONSE:-both}
IDGATE_LOG=${IDGATE_LOG:-on}
CHAIN=${CHAIN:-bare}
LIMIT_BURST=${LIMIT_BURST:-}
[[ -z $LIMIT_BURST || $LIMIT_BURST =~ ^[1-9][0-9]*$ ]] || { echo "LIMIT_BURST must be a positive integer" >&2; exit 2; }
EVIDENCE=${EVIDENCE:-off}
REPLICAS=${REPLICAS:-1}
PEER_LOG=${PEER_LOG:-$IDGATE_LOG}
# The memory figure is the bare chain's: with CHAIN=full it is off unless asked for.
if [[ $CHAIN == full ]]; then MEM_CONNS=${MEM_CONNS:-0}; else MEM_CONNS=${MEM_CONNS:-2000}; fi
[[ $WHAT == throughput ]] && MEM_CONNS=0
[[ $WHAT == memory ]] && MODES=""
PROXIES=${PROXIES:-idgate nginx haproxy}
DEFAULT_IDGATE_BIN=$REPO_DIR/target/release/idgate
IDGATE_BIN=${IDGATE_BIN:-$DEFAULT_IDGATE_BIN}
PKI=${PKI:-idgate}
OUT_DIR=${OUT_DIR:-$BENCH_DIR/out}
OHA_THREADS=${OHA_THREADS:-$(nproc)}
TASKSET_OHA=${TASKSET_OHA:-}
TASKSET_PROXY=${TASKSET_PROXY:-}
TASKSET_UPSTREAM=${TASKSET_UPSTREAM:-}
REQUESTS=${REQUESTS:-}
# shellcheck disable=SC2206 # a command line, split on spaces
WRAP=(${PROXY_WRAP:-})

API_KEY=bench-secret
UPSTREAM_PORT=18080
IDGATE_PORT=18443
IDGATE_ADMIN_PORT=19901
IDGATE2_PORT=18446
IDGATE2_ADMIN_PORT=19902
REDIS_PORT=16379
NGINX_PORT=18444
HAPROXY_PORT=18445

# What the fixed upstream answers: the small body on any path, and under
# /decision/ a ~0.5 KB identity-verification decision shaped like a provider's
# (synthetic values).
SMALL_BODY='{"ok":true}'
DECISION_BODY='{"session_id":"7f3c2a9e-4b1d-4e8a-9c6f-2d5b8a1e0f34","status":"Approved","workflow_id":"b2e4c6a8-1d3f-4a5b-8c7d-9e0f1a2b3c4d","vendor_data":"user-4821","decision":{"id_verification":{"status":"Approved","document_type":"Identity Card","issuing_state":"DEU","date_of_birth":"1990-05-14","expiration_date":"2031-08-30"},"liveness":{"status":"Approved","method":"PASSIVE","score":97.4},"face_match":{"status":"Approved","score":91.2},"aml":{"status":"Approved","total_hits":0}},"created_at":"2026-12-01T09:14:22Z"}'
declare -A RESP_PATH=([small]=/bench/item [decision]=/decision/7f3c2a9e-4b1d-4e8a-9c6f-2d5b8a1e0f34)
declare -A RESP_BODY=([small]=$SMALL_BODY [decision]=$DECISION_BODY)
declare -A RESP_LABEL=([small]="${#SMALL_BODY}-byte JSON" [decision]="${#DECISION_BODY}-byte decision JSON")

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- arguments

dur_secs() { # oha duration -> whole seconds (rounded up), for timeouts
  local d=$1
  [[ $d =~ ^([0-9]+)(ms|s|m|h)?$ ]] || die "bad duration '$d' (use e.g. 500ms, 10s, 1m)"
  local n=${BASH_REMATCH[1]} u=${BASH_REMATCH[2]:-s}
  case $u in
    ms) echo $(((n + 999) / 1000)) ;;
    s) echo "$n" ;;
    m) echo $((n * 60)) ;;
    h) echo $((n * 3600)) ;;
  esac
}
dur_secs "$DURATION" >/dev/null
[[ -z $REQUESTS || $REQUESTS =~ ^[1-9][0-9]*$ ]] || die "REQUESTS must be a whole number"
[[ $WARMUP == 0 ]] || dur_secs "$WARMUP" >/dev/null
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive integer"
for p in $PROXIES; do
  case $p in idgate | nginx | haproxy) ;; *) die "unknown proxy '$p' in PROXIES" ;; esac
done
for m in $MODES; do
  case $m in keepalive | newconn) ;; *) die "unknown mode '$m' in MODES" ;; esac
done
case $RESPONSE in
  small | decision) RESPONSES=$RESPONSE ;;
  both) RESPONSES="small decision" ;;
  *) die "RESPONSE must be small, decision or both" ;;
esac
case $IDGATE_LOG in on | off) ;; *) die "IDGATE_LOG must be on or off" ;; esac
case $CHAIN in bare | full) ;; *) die "CHAIN must be bare or full" ;; esac
case $EVIDENCE in on | off | audit | masking) ;; *) die "EVIDENCE must be on, off, audit or masking" ;; esac
case $REPLICAS in 1) ;; 2) [[ $CHAIN == full ]] || die "REPLICAS=2 needs CHAIN=full (the replicas share Redis)" ;; *) die "REPLICAS must be 1 or 2" ;; esac
case $PEER_LOG in on | off) ;; *) die "PEER_LOG must be on or off" ;; esac
[[ $MEM_CONNS =~ ^[0-9]+$ ]] || die "MEM_CONNS must be a non-negative integer"
has_proxy() { [[ " $PROXIES " == *" $1 "* ]]; }

# ---------------------------------------------------------------- tools

find_tool() { # name -> path, also looking in sbin and cargo's bin
  local t
  for t in "$(command -v "$1" 2>/dev/null || true)" "/usr/sbin/$1" "/usr/local/sbin/$1" \
    "${CARGO_HOME:-$HOME/.cargo}/bin/$1"; do
    [[ -n $t && -x $t ]] && { echo "$t"; return 0; }
  done
  return 1
}

missing=0
TOOLS="nginx haproxy curl openssl jq python3"
[[ -z $MODES ]] || TOOLS+=" oha"
[[ $CHAIN == bare ]] || TOOLS+=" redis-server"
for t in $TOOLS; do find_tool "$t" >/dev/null || missing=1; done
if ((missing)); then
  log "some tools are missing; running bench/setup.sh"
  "$BENCH_DIR/setup.sh"
fi
OHA=""
[[ -z $MODES ]] || OHA=$(find_tool oha) || die "oha not found"
NGINX=$(find_tool nginx) || die "nginx not found"
HAPROXY=$(find_tool haproxy) || die "haproxy not found"
CURL=$(find_tool curl) || die "curl not found"
OPENSSL=$(find_tool openssl) || die "openssl not found"
find_tool jq >/dev/null || die "jq not found"
PYTHON=$(find_tool python3) || die "python3 not found"

need_idgate_bin=0
has_proxy idgate && need_idgate_bin=1
[[ $PKI == idgate ]] && need_idgate_bin=1
if ((need_idgate_bin)) && [[ ! -x $IDGATE_BIN ]]; then
  [[ $IDGATE_BIN == "$DEFAULT_IDGATE_BIN" ]] || die "IDGATE_BIN=$IDGATE_BIN is not executable"
  log "building idgate (cargo build --release -p idgate)"
  (cd "$REPO_DIR" && cargo build --release -p idgate)
fi

# ---------------------------------------------------------------- processes

declare -A PID=()   # name -> pid of the process we started
cleanup() {
  local rc=$? name pid i
  trap - EXIT INT TERM
  for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    for i in $(seq $((${#WRAP[@]} ? 1200 : 50))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name ($pid) did not stop on TERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
      # nginx workers are children of the master; make sure none is left.
      pkill -KILL -P "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
for port in $UPSTREAM_PORT $IDGATE_PORT $IDGATE_ADMIN_PORT $NGINX_PORT $HAPROXY_PORT $IDGATE2_PORT $IDGATE2_ADMIN_PORT $REDIS_PORT; do
  if port_busy "$port"; then die "127.0.0.1:$port is already in use (another benchmark running?)"; fi
done

alive() { kill -0 "${PID[$1]}" 2>/dev/null; }
pin() { # cpu-list command... : run under taskset when a CPU list is given
  local cpus=$1; shift
  if [[ -n $cpus ]]; then taskset -c "$cpus" "$@"; else "$@"; fi
}
spawn() { # cpu-list command... : like pin, but replaces the calling (background) subshell,
  # so that `spawn ... &` leaves $! pointing at the server process itself
  local cpus=$1; shift
  if [[ -n $cpus ]]; then exec taskset -c "$cpus" "$@"; else exec "$@"; fi
}

wait_ready() { # name url logfile [curl args...]: poll until the url answers 200
  local name=$1 url=$2 logf=$3 code i
  shift 3
  for i in $(seq 300); do
    alive "$name" || { tail -n 30 "$logf" >&2 || true; die "$name exited during start-up (log: $logf)"; }
    code=$("$CURL" -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" 2>/dev/null || true)
    [[ $code == 200 ]] && return 0
    sleep 0.1
  done
  tail -n 30 "$logf" >&2 || true
  die "$name not ready after 30s at $url (last status '$code', log: $logf)"
}

# ---------------------------------------------------------------- work dir and PKI

WORK=$OUT_DIR/work
rm -rf "$WORK"
mkdir -p "$WORK"/{pki,upstream/tmp,nginx/tmp,haproxy,idgate,idgate2,redis,oha}
P=$WORK/pki

gen_pki_openssl() { # same file names and shapes as `idgate dev-pki`
  local d=$1
  (
    cd "$d"
    "$OPENSSL" ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
    "$OPENSSL" req -x509 -new -key ca.key -sha256 -days 2 -subj "/O=bench/CN=bench.test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectAltName=URI:spiffe://bench.test" -out bundle.pem 2>/dev/null
    leaf() { # stem uri extra-san eku
      "$OPENSSL" ecparam -name prime256v1 -genkey -noout -out "$1.key" 2>/dev/null
      "$OPENSSL" req -new -key "$1.key" -subj "/O=bench" -out "$1.csr" 2>/dev/null
      printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
        "$4" "URI:$2${3:+,$3}" >"$1.ext"
      "$OPENSSL" x509 -req -in "$1.csr" -CA bundle.pem -CAkey ca.key -CAcreateserial -sha256 -days 1 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    leaf gateway spiffe://bench.test/idgate "DNS:localhost,IP:127.0.0.1" serverAuth,clientAuth
    leaf client spiffe://bench.test/client "" clientAuth
    rm -f bundle.srl
  )
}

case $PKI in
  idgate)
    log "PKI: $IDGATE_BIN dev-pki"
    "$IDGATE_BIN" dev-pki --out "$P" --trust-domain bench.test --workload spiffe://bench.test/client \
      >"$WORK/pki.log" 2>&1 || { cat "$WORK/pki.log" >&2; die "idgate dev-pki failed"; }
    ;;
  openssl)
    log "PKI: openssl (ECDSA P-256)"
    gen_pki_openssl "$P"
    ;;
  *)
    [[ -d $PKI ]] || die "PKI must be 'idgate', 'openssl' or a directory"
    log "PKI: copied from $PKI"
    cp "$PKI"/{bundle.pem,gateway.crt,gateway.key,client.crt,client.key} "$P"/
    ;;
esac
for f in bundle.pem gateway.crt gateway.key client.crt client.key; do
  [[ -s $P/$f ]] || die "PKI is missing $P/$f"
done
CLIENT_TLS=(--cert "$P/client.crt" --key "$P/client.key" --cacert "$P/bundle.pem")

# ---------------------------------------------------------------- configs

# nginx drops to `nobody` when started as root unless told otherwise; keep the
# current user so the work dir stays readable and writable.
NGINX_USER=""
[[ $EUID -eq 0 ]] && NGINX_USER="user $(id -un) $(id -gn);"

nginx_common() { # dir
  cat <<EOF
$NGINX_USER
worker_processes 1;
worker_rlimit_nofile 16384;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
EOF
}
nginx_http_common() { # dir access-log-directive
  cat <<EOF
    $2
    client_body_temp_path $1/tmp/body;
    proxy_temp_path $1/tmp/proxy;
    fastcgi_temp_path $1/tmp/fastcgi;
    uwsgi_temp_path $1/tmp/uwsgi;
    scgi_temp_path $1/tmp/scgi;
    # nginx closes a keep-alive connection after 1000 requests by default;
    # the other proxies do not, so lift the limit.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
EOF
}

# The fixed upstream: plain HTTP, one worker, 200 {"ok":true} for any path and
# the decision JSON under /decision/, but 401 when the proxy did not set the API
# key (so a passing sanity check proves the header injection).
{
  nginx_common "$WORK/upstream"
  cat <<EOF
http {
$(nginx_http_common "$WORK/upstream" "access_log off;")
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        default_type application/json;
        location / {
            if (\$http_x_api_key != "$API_KEY") { return 401 '{"ok":false}'; }
            return 200 '$SMALL_BODY';
        }
        location /decision/ {
            if (\$http_x_api_key != "$API_KEY") { return 401 '{"ok":false}'; }
            return 200 '$DECISION_BODY';
        }
    }
}
EOF
} >"$WORK/upstream/nginx.conf"

# IDGATE_LOG=on leaves [log] at its defaults (info: one access line per request,
# text, to standard output, which goes to a file here).
IDGATE_LOG_TOML=""
[[ $IDGATE_LOG == off ]] && IDGATE_LOG_TOML=$'\n[log]\nlevel = "warn"'

# CHAIN=bare: one route doing what the peers do. CHAIN=full: every request also shows an
# API key (kept in Redis, like the limits' counts) and passes two rate limits set far above
# the load (their cost is measured, not refusals); a session is created once through the
# gateway (POST, `owns`) and every decision read is checked against its owner.
# EVIDENCE=on: the audit trail with its defaults, and the decision answer masked;
# EVIDENCE=audit or masking: one of the two.
IDGATE_EVIDENCE_TOML=""
MASKING_LINE=""
MASKED=no
if [[ $EVIDENCE == on || $EVIDENCE == audit ]]; then
  rm -rf "$WORK/idgate/audit" "$WORK/idgate/audit-keys"
  "$IDGATE_BIN" audit keygen --out "$WORK/idgate/audit-keys" >/dev/null
  IDGATE_EVIDENCE_TOML="[audit]
dir = \"$WORK/idgate/audit\"
signing_key = \"file:$WORK/idgate/audit-keys/audit-signing.pem\"
"
fi
if [[ $EVIDENCE == on || $EVIDENCE == masking ]]; then
  MASKED=yes
  head -c 48 /dev/urandom | base64 >"$WORK/idgate/pseudonym-key"
  chmod 600 "$WORK/idgate/pseudonym-key"
  MASKING_LINE='masking = "bench"'
  IDGATE_EVIDENCE_TOML="$IDGATE_EVIDENCE_TOML
[masking.profiles.bench]
pseudonym_key = \"file:$WORK/idgate/pseudonym-key\"
rules = [
  { path = \"\$..vendor_data\", action = \"pseudonymize\" },
  { path = \"\$..date_of_birth\", action = \"truncate_date\" },
  { path = \"\$..expiration_date\", action = \"redact\" },
]"
fi

if [[ $CHAIN == bare ]]; then
  IDGATE_CHAIN_TOML="[[routes]]
name = \"all\"
methods = [\"GET\"]
path = \"/{*rest}\"
upstream = \"fixed\"
allow = [\"spiffe://bench.test/client\"]
$MASKING_LINE"
else
  head -c 48 /dev/urandom | base64 >"$WORK/idgate/pepper"
  chmod 600 "$WORK/idgate/pepper"
  # LIMIT_BURST under 16 keeps the limits from being leased: Redis decides every request.
  LIMIT_BURST_TOML=""
  [[ -n $LIMIT_BURST ]] && LIMIT_BURST_TOML=$'\n'"burst = $LIMIT_BURST"
  chain_route() { # name method path extra-line
    printf '\n[[routes]]\nname = "%s"\nmethods = ["%s"]\npath = "%s"\nupstream = "fixed"\n' "$1" "$2" "$3"
    printf 'allow = ["spiffe://bench.test/client", "apikey:bench"]\nauth = ["mtls", "api_key"]\n'
    printf 'rate_limits = ["per-workload", "per-key-route"]\n%s\n' "$4"
  }
  IDGATE_CHAIN_TOML="[state]
backend = \"redis\"
url = \"redis://127.0.0.1:$REDIS_PORT\"

[api_keys]
pepper = \"file:$WORK/idgate/pepper\"

[[rate_limits]]
name = \"per-workload\"
key = [\"spiffe_id\"]
rate = \"500000/s\"$LIMIT_BURST_TOML

[[rate_limits]]
name = \"per-key-route\"
key = [\"api_key\", \"route\"]
rate = \"500000/s\"$LIMIT_BURST_TOML
$(chain_route create POST /decision/ 'owns = "$.session_id"')
$(chain_route decision GET '/decision/{session_id}' "owner_param = \"session_id\"
$MASKING_LINE")
$(chain_route all GET '/{*rest}' '')"
fi

cat >"$WORK/idgate/idgate.toml" <<EOF
workers = 1

[listener]
bind = "127.0.0.1:$IDGATE_PORT"
client_auth = "required"
# The memory figure holds MEM_CONNS connections of one client SVID from loopback: more than
# the default caps per identity (256) and per address (512), which would refuse the rest.
max_connections_per_identity = $((MEM_CONNS > 256 ? MEM_CONNS + CONNS : 256))
max_connections_per_ip = $((MEM_CONNS > 512 ? MEM_CONNS + CONNS : 512))

[identity]
svid_cert = "$P/gateway.crt"
svid_key = "$P/gateway.key"

[[identity.trust_bundles]]
trust_domain = "bench.test"
bundle = "$P/bundle.pem"

[admin]
bind = "127.0.0.1:$IDGATE_ADMIN_PORT"
$IDGATE_LOG_TOML

[[upstreams]]
name = "fixed"
url = "http://127.0.0.1:$UPSTREAM_PORT"
[upstreams.credential]
header = "x-api-key"
secret = "env:BENCH_API_KEY"

$IDGATE_CHAIN_TOML

$IDGATE_EVIDENCE_TOML
EOF

NGINX_ACCESS_LOG="access_log off;"
[[ $PEER_LOG == on ]] && NGINX_ACCESS_LOG="access_log $WORK/nginx/access.log combined buffer=64k;"
{
  nginx_common "$WORK/nginx"
  cat <<EOF
http {
$(nginx_http_common "$WORK/nginx" "$NGINX_ACCESS_LOG")
    upstream fixed {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl backlog=4096;
        ssl_certificate $P/gateway.crt;
        ssl_certificate_key $P/gateway.key;
        ssl_client_certificate $P/bundle.pem;
        ssl_verify_client on;
        ssl_verify_depth 2;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://fixed;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-api-key $API_KEY;
        }
    }
}
EOF
} >"$WORK/nginx/nginx.conf"

cat "$P/gateway.crt" "$P/gateway.key" >"$WORK/haproxy/gateway.pem"
# HAProxy has no file logger and there is no syslog daemon here: it writes each
# line to its standard output (non-blocking; a line is dropped, not waited for,
# when the pipe or file cannot take it), which is redirected to access.log.
HAPROXY_LOG_GLOBAL="" HAPROXY_LOG_DEFAULTS=""
if [[ $PEER_LOG == on ]]; then
  HAPROXY_LOG_GLOBAL="    log stdout format raw local0 info"
  HAPROXY_LOG_DEFAULTS=$'    log global\n    option httplog'
fi
cat >"$WORK/haproxy/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
    pidfile $WORK/haproxy/haproxy.pid
    ssl-default-bind-options ssl-min-ver TLSv1.2
$HAPROXY_LOG_GLOBAL

defaults
    mode http
$HAPROXY_LOG_DEFAULTS
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT ssl crt $WORK/haproxy/gateway.pem ca-file $P/bundle.pem verify required alpn http/1.1
    http-request set-header x-api-key $API_KEY
    default_backend fixed

backend fixed
    http-reuse always
    server fixed 127.0.0.1:$UPSTREAM_PORT
EOF

# ---------------------------------------------------------------- start

# The proxies (which inherit it) and the connection holder need a descriptor per
# held connection and more: raise the soft limit as far as the hard one allows.
nofile_want=$((MEM_CONNS * 2 + 1024))
nofile_hard=$(ulimit -Hn)
[[ $nofile_hard == unlimited ]] || ((nofile_want <= nofile_hard)) || nofile_want=$nofile_hard
(($(ulimit -Sn) >= nofile_want)) || ulimit -Sn "$nofile_want"
((MEM_CONNS + 256 <= $(ulimit -Sn))) || die "ulimit -n $(ulimit -Sn) is too low for MEM_CONNS=$MEM_CONNS"

log "starting the fixed upstream (nginx, 1 worker) on 127.0.0.1:$UPSTREAM_PORT"
"$NGINX" -t -q -e "$WORK/upstream/error.log" -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" \
  || die "upstream nginx config invalid"
spawn "$TASKSET_UPSTREAM" "$NGINX" -e "$WORK/upstream/error.log" -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" \
  -g 'daemon off;' >"$WORK/upstream/stdout.log" 2>&1 &
PID[upstream]=$!
wait_ready upstream "http://127.0.0.1:$UPSTREAM_PORT/x" "$WORK/upstream/error.log" -H "x-api-key: $API_KEY"
code=$("$CURL" -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$UPSTREAM_PORT/x")
[[ $code == 401 ]] || die "upstream answers $code without the API key, expected 401"

# CHAIN=full: the Redis the limits' counts and the API key live in, and the key every
# request to idgate shows (oha and curl send it; the peers ignore it).
IDGATE_HDR=()
if [[ $CHAIN == full ]]; then
  REDIS=$(find_tool redis-server) || die "redis-server not found"
  log "starting Redis on 127.0.0.1:$REDIS_PORT (no persistence)"
  spawn "$TASKSET_UPSTREAM" "$REDIS" --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK/redis" >"$WORK/redis/redis.log" 2>&1 &
  PID[redis]=$!
  for i in $(seq 100); do
    "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $REDIS_PORT), 0.2)" 2>/dev/null && break
    alive redis || die "redis-server exited (log: $WORK/redis/redis.log)"
    sleep 0.1
  done
  BENCH_KEY=$(env -u IDGATE_LOG BENCH_API_KEY="$API_KEY" "$IDGATE_BIN" keys create \
    --config "$WORK/idgate/idgate.toml" --name bench 2>"$WORK/idgate/keys.log") \
    || { cat "$WORK/idgate/keys.log" >&2; die "idgate keys create failed"; }
  IDGATE_HDR=(-H "x-api-key: $BENCH_KEY")
  # The second replica: the same configuration on other ports.
  sed -e "s/127.0.0.1:$IDGATE_PORT/127.0.0.1:$IDGATE2_PORT/" -e "s/127.0.0.1:$IDGATE_ADMIN_PORT/127.0.0.1:$IDGATE2_ADMIN_PORT/" \
    "$WORK/idgate/idgate.toml" >"$WORK/idgate2/idgate.toml"
fi
proxy_hdr() { # proxy -> sets HDR to the extra headers its requests carry
  HDR=()
  [[ $1 == idgate* ]] && HDR=("${IDGATE_HDR[@]}")
  return 0
}

declare -A PORT=([idgate]=$IDGATE_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT [idgate2]=$IDGATE2_PORT)
declare -A LOGF=([idgate]=$WORK/idgate/idgate.log [nginx]=$WORK/nginx/error.log [haproxy]=$WORK/haproxy/haproxy.log [idgate2]=$WORK/idgate2/idgate.log)
declare -A LABEL=([idgate]=idgate [nginx]=nginx [haproxy]=HAProxy [idgate2]="idgate (second replica)")

declare -A MEASURE=()
NGINX_MASTER_PID=""
start_proxies() {
  local p
  if has_proxy idgate; then
    log "starting idgate on 127.0.0.1:$IDGATE_PORT"
    # IDGATE_LOG is this script's knob; idgate would read it as a log filter.
    spawn "$TASKSET_PROXY" env -u IDGATE_LOG BENCH_API_KEY="$API_KEY" "${WRAP[@]}" "$IDGATE_BIN" serve \
      --config "$WORK/idgate/idgate.toml" >"$WORK/idgate/idgate.log" 2>&1 &
    PID[idgate]=$!
    wait_ready idgate "http://127.0.0.1:$IDGATE_ADMIN_PORT/readyz" "$WORK/idgate/idgate.log"
  fi
  if has_proxy nginx; then
    log "starting nginx on 127.0.0.1:$NGINX_PORT"
    "$NGINX" -t -q -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" || die "nginx config invalid"
    spawn "$TASKSET_PROXY" "${WRAP[@]}" "$NGINX" -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
      -g 'daemon off;' >"$WORK/nginx/stdout.log" 2>&1 &
    PID[nginx]=$!
  fi
  if has_proxy haproxy; then
    log "starting HAProxy on 127.0.0.1:$HAPROXY_PORT"
    "$HAPROXY" -c -q -f "$WORK/haproxy/haproxy.cfg" || die "HAProxy config invalid"
    spawn "$TASKSET_PROXY" "${WRAP[@]}" "$HAPROXY" -db -f "$WORK/haproxy/haproxy.cfg" \
      >"$WORK/haproxy/access.log" 2>"$WORK/haproxy/haproxy.log" &
    PID[haproxy]=$!
  fi
  for p in $PROXIES; do
    proxy_hdr "$p"
    wait_ready "$p" "https://127.0.0.1:${PORT[$p]}/ready" "${LOGF[$p]}" "${CLIENT_TLS[@]}" "${HDR[@]}"
  done
  # CHAIN=full: the session the decision route reads is created through the gateway, so
  # that idgate records its owner.
  if [[ $CHAIN == full ]] && has_proxy idgate; then
    code=$("$CURL" -s -o /dev/null -w '%{http_code}' --max-time 5 "${CLIENT_TLS[@]}" "${IDGATE_HDR[@]}" \
      -X POST -H 'content-type: application/json' --data '{}' "https://127.0.0.1:$IDGATE_PORT/decision/")
    [[ $code == 200 ]] || die "idgate: creating the session through the gateway got HTTP $code"
  fi

  # Processes whose CPU time and memory count for a proxy. For nginx that is the
  # worker (the master only supervises); the master is reported separately.
  for p in $PROXIES; do MEASURE[$p]=${PID[$p]}; done
  if has_proxy nginx; then
    NGINX_MASTER_PID=${PID[nginx]}
    MEASURE[nginx]=$(pgrep -P "$NGINX_MASTER_PID" | tr '\n' ' ' || true)
    [[ -n ${MEASURE[nginx]// /} ]] || die "no nginx worker process found"
  fi
}
stop_proxies() { # tag: stops the proxies and keeps their logs under that tag
  local p pid i f
  for p in $PROXIES; do kill -TERM "${PID[$p]}" 2>/dev/null || true; done
  for p in $PROXIES; do
    pid=${PID[$p]}
    for i in $(seq $((${#WRAP[@]} ? 1200 : 50))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$p ($pid) did not stop on TERM; killing"
      kill -KILL "$pid" 2>/dev/null || true
      pkill -KILL -P "$pid" 2>/dev/null || true # nginx's worker
    fi
    wait "$pid" 2>/dev/null || true
    unset "PID[$p]"
  done
  for f in idgate/idgate.log nginx/access.log nginx/error.log haproxy/access.log haproxy/haproxy.log; do
    [[ -e $WORK/$f ]] && mv "$WORK/$f" "$WORK/${f%.log}.$1.log"
  done
  return 0
}
start_proxies

rss_kib() { # pids... -> VmRSS summed
  local t=0 pid
  for pid in "$@"; do t=$((t + $(awk '/^VmRSS:/{print $2}' "/proc/$pid/status"))); done
  echo "$t"
}
# Resident memory right after start-up, before any request went through.
declare -A RSS_START=()
# shellcheck disable=SC2086
for p in $PROXIES; do RSS_START[$p]=$(rss_kib ${MEASURE[$p]}); done

# ---------------------------------------------------------------- sanity checks

declare -A TLSINFO=()
probe_tls() { # port -> "TLSv1.3 TLS_AES_256_GCM_SHA384, resumption yes|no"
  local port=$1 sess=$WORK/probe-$1.sess out1 out2 proto cipher reused=no
  local req='GET /probe HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'
  out1=$( (sleep 0.3; printf '%b' "$req"; sleep 0.3) | timeout 10 "$OPENSSL" s_client -connect "127.0.0.1:$port" \
    -noservername -cert "$P/client.crt" -key "$P/client.key" -CAfile "$P/bundle.pem" \
    -sess_out "$sess" 2>/dev/null || true)
  # "New, TLSv1.3, Cipher is TLS_AES_256_GCM_SHA384"
  # (sed quits at the first match: `| head` would end it with SIGPIPE, fatal under pipefail)
  proto=$(sed -n 's/^New, \(TLSv[0-9.]*\), Cipher is .*/\1/p;T;q' <<<"$out1")
  cipher=$(sed -n 's/^New, TLSv[0-9.]*, Cipher is //p;T;q' <<<"$out1")
  # A TLS 1.3 server that issues no ticket leaves no session to resume.
  if [[ -s $sess ]]; then
    out2=$( (sleep 0.3; printf '%b' "$req"; sleep 0.3) | timeout 10 "$OPENSSL" s_client -connect "127.0.0.1:$port" \
      -noservername -cert "$P/client.crt" -key "$P/client.key" -CAfile "$P/bundle.pem" \
      -sess_in "$sess" 2>/dev/null || true)
    grep -q '^Reused' <<<"$out2" && reused=yes
  fi
  echo "${proto:-?} ${cipher:-?}, session resumption: $reused"
}

for p in $PROXIES; do
  for resp in $RESPONSES; do
    url="https://127.0.0.1:${PORT[$p]}${RESP_PATH[$resp]}?sanity=1"
    proxy_hdr "$p"
    body=$("$CURL" -sS --max-time 5 "${CLIENT_TLS[@]}" "${HDR[@]}" -w '\n%{http_code}' "$url") \
      || die "$p: request with a client certificate failed"
    code=${body##*$'\n'}
    [[ $code == 200 ]] || die "$p: with a client certificate got HTTP $code, expected 200: ${body%$'\n'*}"
    body=${body%$'\n'*}
    if [[ $p == idgate && $MASKED == yes && $resp == decision ]]; then
      # Masked: the pseudonym, the year and the redaction in place of the values.
      [[ $body == *'"vendor_data":"ps_'* && $body == *'"date_of_birth":"1990"'* && $body != *user-4821* && $body != *2031-08-30* ]] \
        || die "$p: the decision answer is not masked as the profile says: '$body'"
    else
      [[ $body == "${RESP_BODY[$resp]}" ]] || die "$p: unexpected $resp body '$body'"
    fi
  done
  code=$("$CURL" -s -o /dev/null --max-time 5 --cacert "$P/bundle.pem" -w '%{http_code}' "$url" || true)
  [[ $code != 200 ]] || die "$p: a request without a client certificate was let through"
  TLSINFO[$p]=$(probe_tls "${PORT[$p]}")
  log "sanity $p: 200 with a client cert, rejected without (${code/000/handshake refused}); ${TLSINFO[$p]}"
done

# ---------------------------------------------------------------- memory

# Resident memory with MEM_CONNS idle mTLS connections held open:
# (VmRSS with them - VmRSS before) / MEM_CONNS, twice, each time on freshly
# started proxies (none of them gives the memory back when the connections
# close): connections that only made the TLS handshake ("tls"), then
# connections that also served one keep-alive request ("http"). The proxies are
# started afresh once more for the load runs.
MEM_KINDS="tls http"
declare -A MEM_BEFORE=() MEM_HELD=() MEM_ALIVE=()
hold_conns() { # proxy kind
  local p=$1 kind=$2 line pid
  local -a extra=()
  [[ $kind == tls ]] && extra=(--no-request)
  # A handshake takes 1-10 ms here (more on a busy machine): allow 50 ms each.
  local open_secs=$((30 + MEM_CONNS / 20))
  coproc HOLD { exec "$PYTHON" "$BENCH_DIR/hold_conns.py" --port "${PORT[$p]}" --count "$MEM_CONNS" \
    --cert "$P/client.crt" --key "$P/client.key" --ca "$P/bundle.pem" --hold-timeout 60 "${extra[@]}" 2>&1; }
  pid=$HOLD_PID
  PID[hold]=$pid
  IFS= read -r -t "$open_secs" line <&"${HOLD[0]}" || line="no answer from hold_conns.py in ${open_secs}s"
  if [[ $line != held* ]]; then
    kill "$pid" 2>/dev/null || true
    die "$p: could not hold $MEM_CONNS connections: $line"
  fi
  log "memory $p $kind: $line"
  sleep 2 # let the proxy finish its per-connection work
  # shellcheck disable=SC2086
  MEM_HELD[$p/$kind]=$(rss_kib ${MEASURE[$p]})
  echo done >&"${HOLD[1]}"
  IFS= read -r -t 60 line <&"${HOLD[0]}" || line="alive ?"
  MEM_ALIVE[$p/$kind]=${line#alive }
  wait "$pid" 2>/dev/null || true
  unset 'PID[hold]'
}
if ((MEM_CONNS > 0)); then
  mem_last=${MEM_KINDS##* }
  for kind in $MEM_KINDS; do
    for p in $PROXIES; do
      # shellcheck disable=SC2086
      MEM_BEFORE[$p/$kind]=$(rss_kib ${MEASURE[$p]})
      log "memory $p $kind: holding $MEM_CONNS idle mTLS connections"
      hold_conns "$p" "$kind"
      log "memory $p $kind: VmRSS $((MEM_BEFORE[$p/$kind] / 1024)) MiB before, $((MEM_HELD[$p/$kind] / 1024)) MiB" \
        "with $MEM_CONNS held (${MEM_ALIVE[$p/$kind]} still open at the end)"
      sleep "$PAUSE"
    done
    # Fresh proxies for the next kind, and for the load runs if any follow.
    if [[ $kind != "$mem_last" || -n $MODES ]]; then
      log "restarting the proxies"
      stop_proxies "mem-$kind"
      start_proxies
    fi
  done
fi

# ---------------------------------------------------------------- measuring

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pids... -> utime+stime summed
  local t=0 pid v
  for pid in "$@"; do
    v=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')
    t=$((t + v))
  done
  echo "$t"
}
hwm_kib() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
# utime+stime of each thread of the pids, as "tid name ticks" lines: where a proxy's CPU went
# (idgate's worker, its audit writer, its access-log writer). Threads that end between two
# readings are missing from the second.
thread_ticks() {
  local pid task name ticks
  for pid in "$@"; do
    for task in /proc/"$pid"/task/*; do
      name=$(tr ' ' '_' <"$task/comm" 2>/dev/null) || continue
      ticks=$(sed 's/^.*) //' "$task/stat" 2>/dev/null | awk '{print $12 + $13}') || continue
      if [[ -n $ticks ]]; then echo "${task##*/} $name $ticks"; fi
    done
  done
}
# The CPU per request of each thread name between two thread_ticks readings, busiest
# first: "name µs, ...".
thread_split() { # before after ok
  awk -v ok="$3" -v hz="$CLK_TCK" '
    NR == FNR { before[$1] = $3; next }
    { used[$2] += $3 - before[$1] }
    END {
      n = 0
      for (t in used) if (used[t] > 0) { names[++n] = t }
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++)
        if (used[names[j]] > used[names[i]]) { x = names[i]; names[i] = names[j]; names[j] = x }
      for (i = 1; i <= n; i++)
        printf "%s%s %.1f", (i > 1 ? ", " : ""), names[i], (ok > 0 ? used[names[i]] / hz * 1000000 / ok : 0)
    }' "$1" "$2"
}
# The machine's CPU time so far: all of it, the part the hypervisor took for others
# ("steal", the 8th field of /proc/stat's cpu line; 0 on bare metal) and the part left idle
# (idle and iowait): "total steal idle".
machine_ticks() { awk '$1 == "cpu" {t = 0; for (i = 2; i <= NF; i++) t += $i; print t, $9, $5 + $6; exit}' /proc/stat; }
# Resets VmHWM to the current VmRSS, so that a mode's peak is its own and not the
# memory measurement's (Linux >= 4.0; without permission the peak is since start).
HWM_RESET=yes
reset_hwm() {
  local pid
  for pid in "$@"; do echo 5 2>/dev/null >"/proc/$pid/clear_refs" || HWM_RESET=no; done
}

LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
if [[ -n $MODES ]] && awk -v l="$LOAD_BEFORE" 'BEGIN {exit !(l > 0.5)}'; then
  log "WARNING: load average is $LOAD_BEFORE before measuring: other work on this machine will skew the numbers"
fi
RESULTS=$WORK/results.tsv   # mode/response round proxy ok rps p50 p99 cpu_us non200 errors steal%
RSS=$WORK/rss.tsv           # mode proxy kib
: >"$RESULTS"
: >"$RSS"

run_oha() { # proxy mode response duration outfile
  local p=$1 mode=$2 resp=$3 dur=$4 out=$5 secs
  local -a args=(--no-tui --output-format json -o "$out" -c "$CONNS"
    --worker-threads "$OHA_THREADS" "${CLIENT_TLS[@]}")
  [[ $mode == newconn ]] && args+=(--disable-keepalive)
  proxy_hdr "$p"
  args+=("${HDR[@]}")
  secs=$(dur_secs "$dur")
  if [[ -n $REQUESTS && $dur == "$DURATION" ]]; then
    args+=(-n "$REQUESTS")
    secs=3600
  else
    args+=(-z "$dur")
  fi
  pin "$TASKSET_OHA" timeout -k 5 $((secs + 60)) "$OHA" "${args[@]}" "https://127.0.0.1:${PORT[$p]}${RESP_PATH[$resp]}" \
    >"$out.log" 2>&1 || { cat "$out.log" >&2; die "oha failed against $p"; }
  alive "$p" || { tail -n 30 "${LOGF[$p]}" >&2; die "$p died during the run"; }
}

# shellcheck disable=SC2206
proxy_list=($PROXIES)
n_proxies=${#proxy_list[@]}
slot=0
for mode in $MODES; do
  case $mode in
    keepalive) log "mode keepalive: $CONNS keep-alive connections" ;;
    newconn) log "mode newconn: $CONNS concurrent clients, a new TLS connection per request" ;;
  esac
  # shellcheck disable=SC2086
  for p in "${proxy_list[@]}"; do reset_hwm ${MEASURE[$p]}; done
  if [[ $WARMUP != 0 ]]; then
    for p in "${proxy_list[@]}"; do
      for resp in $RESPONSES; do
        log "  warm-up $p $resp ($WARMUP)"
        run_oha "$p" "$mode" "$resp" "$WARMUP" "$WORK/oha/$mode-$resp-warmup-$p.json"
      done
      sleep "$PAUSE"
    done
  fi
  for resp in $RESPONSES; do
    log "  response $resp (${RESP_LABEL[$resp]})"
    for ((r = 1; r <= ROUNDS; r++)); do
      order=()
      for ((i = 0; i < n_proxies; i++)); do order+=("${proxy_list[$(((i + slot) % n_proxies))]}"); done
      slot=$((slot + 1))
      for p in "${order[@]}"; do
        out=$WORK/oha/$mode-$resp-r$r-$p.json
        # shellcheck disable=SC2086
        thread_ticks ${MEASURE[$p]} >"$WORK/threads.before"
        # shellcheck disable=SC2086
        t0=$(cpu_ticks ${MEASURE[$p]})
        read -r m0 s0 i0 <<<"$(machine_ticks)"
        run_oha "$p" "$mode" "$resp" "$DURATION" "$out"
        # shellcheck disable=SC2086
        t1=$(cpu_ticks ${MEASURE[$p]})
        read -r m1 s1 i1 <<<"$(machine_ticks)"
        # After the machine's reading: the processes this spawns are not the run's.
        # shellcheck disable=SC2086
        thread_ticks ${MEASURE[$p]} >"$WORK/threads.after"
        steal=$(awk -v m=$((m1 - m0)) -v s=$((s1 - s0)) 'BEGIN {printf "%.1f", (m > 0 ? 100 * s / m : 0)}')
        idle=$(awk -v m=$((m1 - m0)) -v i=$((i1 - i0)) 'BEGIN {printf "%.1f", (m > 0 ? 100 * i / m : 0)}')
        # Every process's CPU time per request served (the proxy, oha, the upstream, the
        # kernel's network work): what the run cost the machine as a whole.
        busy=$(((m1 - m0) - (s1 - s0) - (i1 - i0)))
        row=$(jq -r --arg mode "$mode/$resp" --arg r "$r" --arg p "$p" --argjson ticks $((t1 - t0)) --argjson hz "$CLK_TCK" \
          --argjson steal "$steal" '
          (.statusCodeDistribution["200"] // 0) as $ok
          | ([.statusCodeDistribution | to_entries[] | select(.key != "200") | .value] | add // 0) as $non200
          | ([.errorDistribution | to_entries[] | select(.key != "aborted due to deadline") | .value] | add // 0) as $errors
          | [$mode, $r, $p, $ok, ($ok / .summary.total),
             (.metrics.latency_ms.p50 // 0), (.metrics.latency_ms.p99 // 0),
             (if $ok > 0 then $ticks / $hz * 1000000 / $ok else 0 end), $non200, $errors, $steal]
          | @tsv' "$out")
        printf '%s\n' "$row" >>"$RESULTS"
        IFS=$'\t' read -r _ _ _ ok rps p50 p99 cpu non200 errors _ <<<"$row"
        all_cpu=$(awk -v b=$busy -v hz="$CLK_TCK" -v n="$ok" 'BEGIN {printf "%.0f", (n > 0 ? b / hz * 1000000 / n : 0)}')
        log "  $resp round $r $p: $(printf '%.0f req/s  p50 %.2f ms  p99 %.2f ms  %.0f us CPU/req' "$rps" "$p50" "$p99" "$cpu")  non-200 $non200  errors $errors  steal $steal%  idle $idle%  machine $all_cpu us CPU/req"
        log "    by thread, us CPU/req: $(thread_split "$WORK/threads.before" "$WORK/threads.after" "$ok")"
        sleep "$PAUSE"
      done
    done
  done
  for p in "${proxy_list[@]}"; do
    kib=0
    for pid in ${MEASURE[$p]}; do
      v=$(hwm_kib "$pid")
      if ((v > kib)); then kib=$v; fi
    done
    printf '%s\t%s\t%s\n' "$mode" "$p" "$kib" >>"$RSS"
  done
done

# ---------------------------------------------------------------- replicas

# REPLICAS=2: idgate alone with CONNS connections, then two idgate processes sharing the
# Redis, each driven by its own oha with CONNS/2, at the same time; their req/s added up.
REPLICA_RESULTS=$WORK/replicas.tsv # response round one two
: >"$REPLICA_RESULTS"
if [[ $REPLICAS == 2 ]] && has_proxy idgate; then
  log "starting a second idgate on 127.0.0.1:$IDGATE2_PORT (same Redis)"
  spawn "$TASKSET_PROXY" env -u IDGATE_LOG BENCH_API_KEY="$API_KEY" "$IDGATE_BIN" serve \
    --config "$WORK/idgate2/idgate.toml" >"$WORK/idgate2/idgate.log" 2>&1 &
  PID[idgate2]=$!
  wait_ready idgate2 "http://127.0.0.1:$IDGATE2_ADMIN_PORT/readyz" "$WORK/idgate2/idgate.log"
  half=$(((CONNS + 1) / 2))
  oha_rps() { jq -r '(.statusCodeDistribution["200"] // 0) / .summary.total' "$1"; }
  for resp in $RESPONSES; do
    for ((r = 1; r <= ROUNDS; r++)); do
      one=$WORK/oha/replicas-$resp-r$r-one.json
      run_oha idgate keepalive "$resp" "$DURATION" "$one"
      sleep "$PAUSE"
      a=$WORK/oha/replicas-$resp-r$r-a.json
      b=$WORK/oha/replicas-$resp-r$r-b.json
      CONNS=$half run_oha idgate keepalive "$resp" "$DURATION" "$a" &
      pa=$!
      CONNS=$half run_oha idgate2 keepalive "$resp" "$DURATION" "$b" &
      pb=$!
      wait "$pa" || die "oha against idgate failed"
      wait "$pb" || die "oha against the second idgate failed"
      two=$(awk -v x="$(oha_rps "$a")" -v y="$(oha_rps "$b")" 'BEGIN {print x + y}')
      printf '%s\t%s\t%s\t%s\n' "$resp" "$r" "$(oha_rps "$one")" "$two" >>"$REPLICA_RESULTS"
      log "  replicas $resp round $r: one $(printf '%.0f' "$(oha_rps "$one")") req/s, two $(printf '%.0f' "$two") req/s"
      sleep "$PAUSE"
    done
  done
fi

# ---------------------------------------------------------------- report

median() { sort -g | awk '{a[NR] = $1} END {if (NR == 0) print 0; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
col() { awk -F'\t' -v m="$1" -v p="$2" -v c="$3" '$1 == m && $3 == p {print $c}' "$RESULTS"; }
sum_col() { col "$@" | awk '{s += $1} END {print s + 0}'; }

cpu_model=$(sed -n 's/^model name[[:space:]]*: //p;T;q' /proc/cpuinfo)
nginx_v=$("$NGINX" -v 2>&1 | sed 's|^nginx version: nginx/||')
haproxy_v=$("$HAPROXY" -v 2>&1 | awk 'NR == 1 {print $3}')
oha_v="-"
[[ -z $OHA ]] || oha_v=$("$OHA" --version | awk '{print $2}')
openssl_v=$("$HAPROXY" -vv 2>/dev/null | sed -n 's/^Running on OpenSSL version : //p' | awk '{print $1, $2}')
idgate_v="-"
has_proxy idgate && idgate_v=$("$IDGATE_BIN" --version 2>/dev/null | awk 'NR == 1' || echo "?")

# What each proxy logs in this run, and how many lines it wrote (nginx's last
# 64 KiB may still sit in its buffer).
declare -A LOGGING=() LOG_LINES=()
CHAIN_DESC="the same work as the peers: mTLS, the upstream key injected, the access log"
[[ $CHAIN == full ]] && CHAIN_DESC="the full chain: mTLS and an API key (both required, the key kept in Redis), two rate limits counted in Redis (each replica leasing 10 ms of a limit at a time: a script per lease, not per request), the owner of the session checked on the decision route (created once through the gateway; its record read from Redis, then kept by the replica for 10 s), the upstream key injected, the access log; nginx and HAProxy do bare mTLS"
AUDIT_DESC="the audit trail ([audit] defaults: one hash-chained record per request, Ed25519 checkpoints, fsync in batches)"
MASK_DESC="the decision answer masked (a pseudonym, a date cut to the year, a redaction)"
case $EVIDENCE in
  on) CHAIN_DESC="$CHAIN_DESC; with the evidence on: $AUDIT_DESC and $MASK_DESC" ;;
  audit) CHAIN_DESC="$CHAIN_DESC; with half the evidence: $AUDIT_DESC, the answer not masked" ;;
  masking) CHAIN_DESC="$CHAIN_DESC; with half the evidence: $MASK_DESC, no audit trail" ;;
esac
[[ -n $LIMIT_BURST ]] && CHAIN_DESC="$CHAIN_DESC; the limits' burst set to $LIMIT_BURST ($( ((LIMIT_BURST < 16)) && echo "not leased: Redis decides every request" || echo "leased"))"
if [[ $IDGATE_LOG == on ]]; then
  LOGGING[idgate]="its defaults: \`[log]\` level \`info\`, text, one access line per request on standard output, redirected to a file"
else
  LOGGING[idgate]="\`[log] level = \"warn\"\`: no access log (\`IDGATE_LOG=off\`)"
fi
if [[ $PEER_LOG == on ]]; then
  LOGGING[nginx]="\`access_log FILE combined buffer=64k\`"
  LOGGING[haproxy]="\`log stdout format raw local0 info\` with \`option httplog\`, standard output redirected to a file (no syslog daemon)"
else
  LOGGING[nginx]="\`access_log off\`"
  LOGGING[haproxy]="no \`log\` line"
fi
count_lines() { # file pattern: matching lines, 0 when there is no such file
  if [[ -e $1 ]]; then grep -c -- "$2" "$1" || true; else echo 0; fi
}
LOG_LINES=([idgate]=$(count_lines "$WORK/idgate/idgate.log" 'idgate::access')
  [nginx]=$(count_lines "$WORK/nginx/access.log" '')
  [haproxy]=$(count_lines "$WORK/haproxy/access.log" ''))
# CHAIN=full: how often idgate asked Redis to run a script (rate-limit checks and leases).
REDIS_SCRIPTS=""
if [[ $CHAIN == full ]] && command -v redis-cli >/dev/null 2>&1; then
  REDIS_SCRIPTS=$(redis-cli -p "$REDIS_PORT" INFO commandstats 2>/dev/null |
    awk -F'[:=,]' '/^cmdstat_eval(sha)?:/ {n += $3} END {print n + 0}')
fi
if [[ $IDGATE_LOG == on && $PEER_LOG == on ]]; then
  LOG_TAG="everyone logging every request"
elif [[ $IDGATE_LOG == off && $PEER_LOG == off ]]; then
  LOG_TAG="no access logs (IDGATE_LOG=off)"
else
  LOG_TAG="idgate logging $IDGATE_LOG, nginx and HAProxy logging $PEER_LOG"
fi
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
per_conn() { # proxy kind -> KiB per held connection: (VmRSS with them - VmRSS before) / MEM_CONNS
  awk -v a="${MEM_HELD[$1/$2]:-0}" -v b="${MEM_BEFORE[$1/$2]:-0}" -v n="$MEM_CONNS" 'BEGIN {printf "%.1f", (a - b) / n}'
}

MD=$OUT_DIR/latest.md
report() {
  echo "### Run of $(date -u +'%Y-%m-%d %H:%M UTC'): $LOG_TAG"
  echo
  echo "- machine: $(nproc) CPUs ($cpu_model), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, Linux $(uname -r)"
  echo "- versions: idgate \`$idgate_v\` (\`${IDGATE_BIN#"$REPO_DIR"/}\`), nginx $nginx_v, HAProxy $haproxy_v (nginx and HAProxy on ${openssl_v:-the system OpenSSL})${OHA:+, oha $oha_v}"
  echo "- load average (1 min) before / after the run: $LOAD_BEFORE / $(cut -d' ' -f1 /proc/loadavg)"
  [[ -z $MODES ]] || echo "- load: oha with $OHA_THREADS threads on the same machine, $CONNS connections, $DURATION per run, $ROUNDS interleaved rounds per mode and response (order rotated each round), ${WARMUP} warm-up; HTTP/1.1 GET"
  [[ -z $MODES ]] || for resp in $RESPONSES; do echo "- response \`$resp\`: ${RESP_LABEL[$resp]} (\`${RESP_PATH[$resp]}\`)"; done
  echo "- idgate does $CHAIN_DESC"
  [[ -z $REDIS_SCRIPTS ]] || echo "- Redis ran $REDIS_SCRIPTS scripts in all (rate-limit checks and leases, warm-ups included) while idgate wrote ${LOG_LINES[idgate]:-0} access lines"
  for p in "${proxy_list[@]}"; do echo "- TLS with ${LABEL[$p]}: ${TLSINFO[$p]}"; done
  for p in "${proxy_list[@]}"; do
    if [[ -n $MODES ]]; then
      echo "- logging, ${LABEL[$p]}: ${LOGGING[$p]}; ${LOG_LINES[$p]:-0} lines written during the load runs"
    else
      echo "- logging, ${LABEL[$p]}: ${LOGGING[$p]}"
    fi
  done
  for mode in $MODES; do
    for resp in $RESPONSES; do
      c=$mode/$resp
      echo
      case $mode in
        keepalive) echo "#### Keep-alive, $resp response: $CONNS persistent connections" ;;
        newconn) echo "#### New connection per request, $resp response: $CONNS concurrent clients (\`--disable-keepalive\`)" ;;
      esac
      echo
      echo "| proxy | req/s (median) | p50 ms | p99 ms | peak RSS MiB | CPU µs/req | non-200 | errors | steal % (max) |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
      declare -A M_RPS=() M_P99=()
      for p in "${proxy_list[@]}"; do
        rps=$(col "$c" "$p" 5 | median)
        p50=$(col "$c" "$p" 6 | median)
        p99=$(col "$c" "$p" 7 | median)
        cpu=$(col "$c" "$p" 8 | median)
        kib=$(awk -F'\t' -v m="$mode" -v p="$p" '$1 == m && $2 == p {print $3}' "$RSS")
        M_RPS[$p]=$rps
        M_P99[$p]=$p99
        printf '| %s | %.0f | %.2f | %.2f | %.1f | %.0f | %s | %s | %.1f |\n' "${LABEL[$p]}" "$rps" "$p50" "$p99" \
          "$(mib "$kib")" "$cpu" "$(sum_col "$c" "$p" 9)" "$(sum_col "$c" "$p" 10)" "$(col "$c" "$p" 11 | sort -g | tail -n 1)"
      done
      if has_proxy idgate; then
        echo
        for p in "${proxy_list[@]}"; do
          [[ $p == idgate ]] && continue
          awk -v a="${M_RPS[idgate]}" -v b="${M_RPS[$p]}" -v c="${M_P99[idgate]}" -v d="${M_P99[$p]}" -v n="${LABEL[$p]}" \
            'BEGIN {printf "- idgate / %s: req/s ×%.2f, p99 ×%.2f\n", n, (b > 0 ? a / b : 0), (d > 0 ? c / d : 0)}'
        done
      fi
      echo
      printf 'req/s per round:'
      for ((r = 1; r <= ROUNDS; r++)); do
        printf ' r%d' "$r"
        for p in "${proxy_list[@]}"; do
          printf ' %s %s' "${LABEL[$p]}" "$(awk -F'\t' -v m="$c" -v r="$r" -v p="$p" '$1 == m && $2 == r && $3 == p {printf "%.0f (steal %.0f%%)", $5, $11}' "$RESULTS")"
        done
        if ((r < ROUNDS)); then printf ';'; fi
      done
      echo
      unset M_RPS M_P99
    done
  done
  if [[ -s $REPLICA_RESULTS ]]; then
    echo
    echo "#### Two idgate processes on one Redis, keep-alive"
    echo
    echo "| response | one process, $CONNS conns: req/s (median) | two processes, $half conns each: req/s (median) | two / one |"
    echo "|---|---:|---:|---:|"
    for resp in $RESPONSES; do
      one=$(awk -F'\t' -v r="$resp" '$1 == r {print $3}' "$REPLICA_RESULTS" | median)
      two=$(awk -F'\t' -v r="$resp" '$1 == r {print $4}' "$REPLICA_RESULTS" | median)
      awk -v r="$resp" -v a="$one" -v b="$two" 'BEGIN {printf "| %s | %.0f | %.0f | ×%.2f |\n", r, a, b, (a > 0 ? b / a : 0)}'
    done
    echo
    echo "On $(nproc) cores, shared by both processes, Redis, the upstream and oha: a second process can"
    echo "only use what the first leaves idle."
  fi
  echo
  echo "#### Memory"
  echo
  if ((MEM_CONNS > 0)); then
    echo "| proxy | VmRSS at start MiB | $MEM_CONNS held, TLS only: MiB | KiB per connection | $MEM_CONNS held, one request each: MiB | KiB per connection | still open |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for p in "${proxy_list[@]}"; do
      row="| ${LABEL[$p]} | $(mib "${RSS_START[$p]}")"
      alive_all=""
      for kind in $MEM_KINDS; do
        row+=" | $(mib "${MEM_HELD[$p/$kind]}") | $(per_conn "$p" "$kind")"
        alive_all+="${alive_all:+ / }${MEM_ALIVE[$p/$kind]}"
      done
      echo "$row | $alive_all |"
    done
    if has_proxy idgate; then
      echo
      for p in "${proxy_list[@]}"; do
        [[ $p == idgate ]] && continue
        awk -v s="${RSS_START[idgate]}" -v t="${RSS_START[$p]}" -v a="$(per_conn idgate tls)" \
          -v b="$(per_conn "$p" tls)" -v c="$(per_conn idgate http)" -v d="$(per_conn "$p" http)" -v n="${LABEL[$p]}" \
          'BEGIN {printf "- idgate / %s: at start ×%.2f, per connection ×%.2f (TLS only) and ×%.2f (one request)\n",
            n, (t > 0 ? s / t : 0), (b > 0 ? a / b : 0), (d > 0 ? c / d : 0)}'
      done
    fi
    echo
    echo "VmRSS at start is read once the proxy is ready, before any request. Then each proxy in"
    echo "turn gets $MEM_CONNS mutual-TLS connections (from Python, 8 loopback source addresses)"
    echo "that are left idle, first after the handshake alone, then, on freshly started proxies,"
    echo "after one keep-alive request each. KiB per connection is (VmRSS with them held - VmRSS just"
    echo "before) / $MEM_CONNS; \"still open\" counts, for each, the connections the proxy had not closed"
    echo "when they were released. For nginx the figures are the worker's."
    ! has_proxy idgate || echo "A ratio below 1 means idgate uses less."
    [[ -z $MODES ]] || echo "The load runs use proxies started afresh after this."
  else
    echo "VmRSS at start (MiB, once ready, before any request):"
    for p in "${proxy_list[@]}"; do printf ' %s %s' "${LABEL[$p]}" "$(mib "${RSS_START[$p]}")"; done
    echo "; idle connections not measured (MEM_CONNS=0)."
  fi
  [[ -n $MODES ]] || return 0
  echo
  if [[ $HWM_RESET == yes ]]; then
    echo "Peak RSS is VmHWM, the process's high-water mark, reset when each mode starts: the mode's own"
    echo "peak, or the memory the proxy kept from the mode before if that was higher. For nginx it is the worker's"
  else
    echo "Peak RSS is VmHWM, the process's high-water mark since start (it could not be reset here): it"
    echo "includes the modes before. For nginx it is the worker's"
  fi
  if [[ -n $NGINX_MASTER_PID ]]; then
    echo "(the master's own peak was $(mib "$(hwm_kib "$NGINX_MASTER_PID")") MiB)."
  else
    echo "(the master is not counted)."
  fi
  echo "CPU µs/req is the proxy's user+system CPU time during the run divided by the 200 responses."
  echo "\"errors\" excludes oha's \"aborted due to deadline\" (requests in flight when a run ends)."
  echo "Steal is the share of the machine's CPU time the hypervisor gave to other guests during a run"
  echo "(/proc/stat), the highest of the rounds: above a few percent the machine was throttled, and the"
  echo "ratios of such runs are not a comparison of the proxies."
}
report >"$MD"

echo
cat "$MD"
echo
log "markdown summary: $MD; raw oha JSON: $WORK/oha/"
