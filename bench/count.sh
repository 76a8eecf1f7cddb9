#!/usr/bin/env bash
# Count the work idgate does per request: calls into the allocator and system calls, by
# thread. Unlike requests per second, these counts do not depend on how busy or throttled
# the machine is, so two builds can be compared on any machine, one after the other.
#
# Usage: bench/count.sh          (as root: it places uprobes and reads tracepoints)
#
#   CHAIN=full        as in run.sh: bare or full
#   EVIDENCE=on       as in run.sh
#   RESPONSE=decision small or decision
#   WINDOW=3          seconds counted, under load, after the load has started
#   IDGATE_BIN=target/release/idgate   the build to count
#   OUT_DIR=bench/out/count            run.sh's work files, and count.md
#
# It runs `bench/run.sh throughput` for idgate alone (one keep-alive round), and while
# oha drives it, records for WINDOW seconds every entry into the allocator
# (`mi_malloc_aligned`, `mi_zalloc_aligned`, `mi_realloc_aligned`: every Rust allocation
# goes through one of them) and every system call of the idgate process. The requests
# counted are the rise of `idgate_requests_total` on the admin listener over the window.
# The probes slow idgate down many times; only the counts mean anything, never the rate.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
CHAIN=${CHAIN:-full}
EVIDENCE=${EVIDENCE:-on}
RESPONSE=${RESPONSE:-decision}
WINDOW=${WINDOW:-3}
IDGATE_BIN=${IDGATE_BIN:-$REPO_DIR/target/release/idgate}
OUT_DIR=${OUT_DIR:-$REPO_DIR/bench/out/count}
ADMIN=http://127.0.0.1:19901/metrics # run.sh's IDGATE_ADMIN_PORT
GROUP=idgate_count

die() { echo "count.sh: $*" >&2; exit 1; }
command -v perf >/dev/null || die "perf is needed (apt-get install linux-perf)"
[[ $(id -u) == 0 ]] || die "run as root: uprobes and tracepoints need it"
[[ -x $IDGATE_BIN ]] || die "$IDGATE_BIN is not executable (cargo build --release -p idgate)"
[[ $RESPONSE == small || $RESPONSE == decision ]] || die "RESPONSE must be small or decision"
[[ $WINDOW =~ ^[1-9][0-9]*$ ]] || die "WINDOW must be a whole number of seconds"
IDGATE_BIN=$(realpath "$IDGATE_BIN")

requests() { # the sum of idgate_requests_total over every label set
  curl -sf "$ADMIN" | awk '/^idgate_requests_total\{/ {n += $NF} END {printf "%d\n", n}'
}

RUN_LOG=$OUT_DIR.run.log
mkdir -p "$(dirname "$OUT_DIR")"
rm -rf "$OUT_DIR" "$RUN_LOG"
perf probe -q -d "$GROUP:*" 2>/dev/null || true
for fn in mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned; do
  perf probe -q -x "$IDGATE_BIN" -a "$GROUP:$fn=$fn" || die "cannot place a uprobe on $fn"
done
RUN_PID=
cleanup() {
  perf probe -q -d "$GROUP:*" 2>/dev/null || true
  [[ -n $RUN_PID ]] && kill "$RUN_PID" 2>/dev/null || true
}
trap cleanup EXIT

# The load runs long enough for the window, whatever the start-up takes.
CHAIN=$CHAIN EVIDENCE=$EVIDENCE IDGATE_BIN=$IDGATE_BIN PROXIES=idgate MODES=keepalive \
  RESPONSE=$RESPONSE ROUNDS=1 WARMUP=0 DURATION=$((WINDOW + 12))s OUT_DIR=$OUT_DIR \
  bash "$BENCH_DIR/run.sh" throughput >"$RUN_LOG" 2>&1 &
RUN_PID=$!

# Under load: the server's request count rising.
pid= before=0
for _ in $(seq 1 240); do
  kill -0 "$RUN_PID" 2>/dev/null || die "run.sh ended early; see $RUN_LOG"
  pid=$(pgrep -f "^$IDGATE_BIN serve" | head -1 || true)
  if [[ -n $pid ]] && grep -q "response $RESPONSE" "$RUN_LOG"; then
    a=$(requests || echo 0)
    sleep 1
    b=$(requests || echo 0)
    if ((b > a + 100)); then before=$b; break; fi
  fi
  sleep 0.5
done
((before > 0)) || die "idgate never came under load; see $RUN_LOG"

# perf starts with its events off and is switched on and off around the two readings of
# the request count, so that both count the same stretch of time.
FIFO_DIR=$(mktemp -d)
mkfifo "$FIFO_DIR/ctl" "$FIFO_DIR/ack"
perf record -q -D -1 --control "fifo:$FIFO_DIR/ctl,$FIFO_DIR/ack" -o "$OUT_DIR.data" \
  -p "$pid" -e "$GROUP:*" -e raw_syscalls:sys_enter >/dev/null 2>&1 &
PERF_PID=$!
exec {ctl}>"$FIFO_DIR/ctl" {ack}<"$FIFO_DIR/ack"
control() { echo "$1" >&"$ctl"; read -r -t 10 -u "$ack" _ || die "perf did not answer '$1'"; }
control enable
before=$(requests)
sleep "$WINDOW"
after=$(requests)
control disable
exec {ctl}>&- {ack}<&-
kill -INT "$PERF_PID" 2>/dev/null || true
wait "$PERF_PID" || true
rm -rf "$FIFO_DIR"
n=$((after - before))
((n > 0)) || die "no request was counted in the window"
wait "$RUN_PID" || die "run.sh failed; see $RUN_LOG"
RUN_PID=

{
  echo "idgate $(basename "$IDGATE_BIN") ($("$IDGATE_BIN" --version 2>/dev/null || echo '?')), CHAIN=$CHAIN EVIDENCE=$EVIDENCE RESPONSE=$RESPONSE: $n requests in ${WINDOW}s counted"
  echo
  echo "| thread | allocations / request | of which realloc | system calls / request |"
  echo "|---|---:|---:|---:|"
  perf script -i "$OUT_DIR.data" -F comm,event 2>/dev/null | awk -v n="$n" -v g="$GROUP:" '
    { comm = $1; ev = $NF; sub(/:$/, "", ev)
      for (i = 2; i < NF; i++) comm = comm " " $i
      threads[comm] = 1
      if (index(ev, g) == 1) { alloc[comm]++; if (ev ~ /realloc/) re[comm]++ }
      else if (ev == "raw_syscalls:sys_enter") sys[comm]++ }
    END {
      for (t in threads) { ta += alloc[t]; tr += re[t]; ts += sys[t]
        printf "| %s | %.1f | %.1f | %.2f |\n", t, alloc[t] / n, re[t] / n, sys[t] / n }
      printf "| all | %.1f | %.1f | %.2f |\n", ta / n, tr / n, ts / n }' | sort -t'|' -k3 -rn
} | tee "$OUT_DIR/count.md"
