#!/usr/bin/env bash
# Installs what bench/run.sh needs and is not part of the Rust build:
# nginx and HAProxy (Debian packages), oha (crates.io), curl, openssl, jq and
# python3 (which holds the idle connections of the memory measurement).
# Safe to run repeatedly: only missing tools are installed.
set -euo pipefail

need_apt=()
command -v nginx   >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]]   || need_apt+=(nginx)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || need_apt+=(haproxy)
command -v curl    >/dev/null 2>&1 || need_apt+=(curl)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v jq      >/dev/null 2>&1 || need_apt+=(jq)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)

if ((${#need_apt[@]})); then
  sudo=()
  [[ $EUID -ne 0 ]] && sudo=(sudo)
  echo "setup: installing ${need_apt[*]} with apt-get" >&2
  # Wait for another apt/dpkg run to release its lock instead of failing.
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! command -v oha >/dev/null 2>&1 && [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/oha" ]]; then
  echo "setup: installing oha with cargo (takes several minutes)" >&2
  cargo install oha --locked
fi
echo "setup: nginx, haproxy, oha, curl, openssl, jq and python3 are present" >&2
