#!/usr/bin/env bash
# System packages the test suite needs beyond the Python venv.
# tests/test_accounting_prometheus.py runs the Grafana dashboard's PromQL against a real Prometheus.
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi
