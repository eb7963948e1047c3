#!/usr/bin/env bash
# System packages the test suite needs beyond the Python venv.
# tests/test_accounting_prometheus.py runs the Grafana dashboard's PromQL against a real Prometheus.
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
# tests/test_oidc.py runs a certified OpenID provider (oidc-provider, tests/oidc/) on Node.js;
# `make test` installs it with `npm ci` from tests/oidc/package-lock.json.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
