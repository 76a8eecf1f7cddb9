#!/usr/bin/env bash
# Count the instructions each proxy executes in user space per request, under valgrind's
# callgrind. Unlike requests per second, the count does not depend on how busy, throttled
# or stolen-from the machine is: the same build with the same load gives the same figure
# within a fraction of a percent, so two builds, or idgate and a peer, can be compared on
# any machine. It does not see the kernel (system calls, TCP on loopback), nor cache misses,
# nor time: it is a companion to run.sh's figures, not a replacement.
#
# Usage: bench/instructions.sh
#
#   PROXIES="idgate haproxy nginx"
#   RESPONSE=decision  small, decision or both
#   CHAIN=bare         as in run.sh (the peers always do bare mTLS)
#   EVIDENCE=off       as in run.sh
#   N1=2000 N2=8000    the two request counts; the figure is the slope between them
#   CONNS=16           keep-alive connections oha spreads the requests over
#   IDGATE_BIN=target/release/idgate
#   OUT_DIR=bench/out/instructions   run.sh's work files, callgrind's files, instructions.md
#
# Each proxy runs under `valgrind --tool=callgrind` (with its child processes: nginx's
# worker), is sent exactly N1 keep-alive requests by oha through `run.sh throughput`
# (REQUESTS=N1), and is stopped; callgrind's totals are summed over every thread and
# process. The same again with N2 requests. Start-up, TLS handshakes, the readiness checks
# and shutdown are the same in both runs, so (total(N2) - total(N1)) / (N2 - N1) is what one
# more request costs. callgrind's own files stay in OUT_DIR/<proxy>.<response>.<n>/ for
# `callgrind_annotate`.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
PROXIES=${PROXIES:-idgate haproxy nginx}
RESPONSE=${RESPONSE:-decision}
CHAIN=${CHAIN:-bare}
EVIDENCE=${EVIDENCE:-off}
N1=${N1:-2000}
N2=${N2:-8000}
CONNS=${CONNS:-16}
IDGATE_BIN=${IDGATE_BIN:-$REPO_DIR/target/release/idgate}
OUT_DIR=${OUT_DIR:-$REPO_DIR/bench/out/instructions}

die() { echo "instructions.sh: $*" >&2; exit 1; }
command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
[[ $N1 =~ ^[1-9][0-9]*$ && $N2 =~ ^[1-9][0-9]*$ ]] && ((N2 > N1)) ||
  die "N1 and N2 must be whole numbers with N2 > N1"
case $RESPONSE in
  small | decision) responses=$RESPONSE ;;
  both) responses="small decision" ;;
  *) die "RESPONSE must be small, decision or both" ;;
esac
[[ -x $IDGATE_BIN ]] || die "$IDGATE_BIN is not executable (cargo build --release -p idgate)"
IDGATE_BIN=$(realpath "$IDGATE_BIN")
mkdir -p "$OUT_DIR"
OUT_DIR=$(realpath "$OUT_DIR")

declare -A LABEL=([idgate]=idgate [nginx]=nginx [haproxy]=HAProxy)

total() { # proxy response n -> callgrind's instruction total for that run
  local p=$1 resp=$2 n=$3 dir=$OUT_DIR/$1.$2.$3
  rm -rf "$dir"
  mkdir -p "$dir"
  CHAIN=$CHAIN EVIDENCE=$EVIDENCE IDGATE_BIN=$IDGATE_BIN PROXIES=$p MODES=keepalive \
    RESPONSE=$resp ROUNDS=1 WARMUP=0 CONNS=$CONNS REQUESTS=$n MEM_CONNS=0 \
    PROXY_WRAP="valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=$dir/callgrind.%p" \
    OUT_DIR=$OUT_DIR/run bash "$BENCH_DIR/run.sh" throughput >"$dir/run.log" 2>&1 ||
    die "run.sh failed for $p ($resp, $n requests); see $dir/run.log"
  local sum
  sum=$(cat "$dir"/callgrind.* 2>/dev/null | awk '/^totals:/ {s += $2} END {printf "%d\n", s}')
  ((sum > 0)) || die "callgrind wrote no totals for $p ($resp, $n requests); see $dir/run.log"
  echo "$sum"
}

declare -A PER=()
for resp in $responses; do
  for p in $PROXIES; do
    [[ -n ${LABEL[$p]:-} ]] || die "unknown proxy '$p' (idgate, haproxy, nginx)"
    echo "instructions.sh: $p, $resp: $N1 then $N2 requests under callgrind" >&2
    a=$(total "$p" "$resp" "$N1")
    b=$(total "$p" "$resp" "$N2")
    PER[$p.$resp]=$(((b - a) / (N2 - N1)))
  done
done

{
  echo "Instructions per request in user space (callgrind), keep-alive over $CONNS connections,"
  echo "CHAIN=$CHAIN EVIDENCE=$EVIDENCE; slope between $N1 and $N2 requests; $("$IDGATE_BIN" --version 2>/dev/null || echo '?')"
  echo
  echo "| proxy | response | instructions / request | / idgate |"
  echo "|---|---|---:|---:|"
  for resp in $responses; do
    for p in $PROXIES; do
      ratio=-
      [[ -n ${PER[idgate.$resp]:-} ]] && ratio=$(awk -v a="${PER[$p.$resp]}" -v b="${PER[idgate.$resp]}" 'BEGIN {printf "%.2f", a / b}')
      echo "| ${LABEL[$p]} | $resp | ${PER[$p.$resp]} | $ratio |"
    done
  done
} | tee "$OUT_DIR/instructions.md"
