#!/usr/bin/env bash
# Runs idgate's fuzz targets, one after the other, each for a fixed time.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# SECONDS defaults to 30; TARGETs default to all of them. Needs `cargo install cargo-fuzz`.
# The toolchain is stable, so RUSTC_BOOTSTRAP=1 unlocks the nightly flags cargo-fuzz uses.
# Environment:
#   SANITIZER=address|none   (default address; `none` if the sanitizer build fails)
#   FUZZ_ARGS="..."          extra libFuzzer flags, e.g. "-jobs=2 -workers=2"
#   FUZZ_TIMEOUT=10          seconds one input may take before it counts as a crash (a hang,
#                            or work that grows faster than the input)
#   FUZZ_RSS_LIMIT_MB=2048   memory the run may hold before it counts as a crash (an input
#                            that makes a parser allocate far more than its own size)
#
# The corpus grows in fuzz/corpus/<target>/ (gitignored); the checked-in seeds in
# fuzz/seeds/<target>/ are read as a second, read-only corpus dir. Crashes land in
# fuzz/artifacts/<target>/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-...
# and minimise it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz tmin <target> fuzz/artifacts/<target>/crash-...
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

secs="${1:-30}"
shift || true
all=(spiffe_id svid_leaf config pem_bundle request_path jwt jwt_svid api_key oauth_form secret_ref upstream_response proxy_protocol ownership_extract mask_json audit_file webhook_verify webhook_event_time outbox_open strict_json jwt_claims jwks http_headers oauth2_token_answer vault_answer api_key_record redis_reply subscriber_answer)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

export RUSTC_BOOTSTRAP=1
san=(-s "${SANITIZER:-address}")
read -r -a extra <<<"${FUZZ_ARGS:-}"

cargo fuzz build "${san[@]}"

# A fresh SVID and key (never committed) give parse_svid a matching pair to start from.
seed_svid() {
    local bin="$here/../target/debug/idgate" tmp
    [ -x "$bin" ] || bin="$here/../target/release/idgate"
    [ -x "$bin" ] || return 0
    tmp="$(mktemp -d)"
    if "$bin" dev-pki --out "$tmp" --trust-domain example.org \
        --workload spiffe://example.org/a >/dev/null 2>&1; then
        cat "$tmp/a.crt" "$tmp/bundle.pem" "$tmp/a.key" >corpus/pem_bundle/svid-combined.pem
        { cat "$tmp/a.crt"; printf '\0'; cat "$tmp/a.key"; } >corpus/pem_bundle/svid-split.pem
    fi
    rm -rf "$tmp"
}

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    [ "$t" = pem_bundle ] && seed_svid
    dict=()
    [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
    # The checked-in seeds, where a target has any, as a second (read-only) corpus.
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    echo "=== $t: ${secs}s ==="
    if ! cargo fuzz run "${san[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$secs" -print_final_stats=1 \
        -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_LIMIT_MB:-2048}" \
        "${dict[@]}" "${extra[@]}"; then
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "FAILED: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "all targets ran ${secs}s without a crash"
