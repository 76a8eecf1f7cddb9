#!/usr/bin/env bash
# The test command: installs what the tests need when missing, checks formatting and lints,
# then runs the whole suite (unit tests and end-to-end tests over real sockets).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-test-deps.sh
# Console scripts installed by pip (OpenBao's `bao`) live beside the Python interpreter,
# which a fresh shell's PATH may not name yet.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
