#!/usr/bin/env bash
# Install Debian's `chromium` for the evaluation report's browser test
# (tests/evaluate/test_eval_report_browser.py): the page is rendered headless, its images must decode and the
# console must stay quiet. Idempotent: with chromium on PATH it only says so. Needs root (apt-get); the
# package index is refreshed only when it does not know chromium yet. Nothing is downloaded by Python.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "[browser] chromium is installed: $(command -v chromium)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "[browser] chromium is missing and this is not root: run 'sudo apt-get install chromium'" \
         "(the browser test skips without it, and fails under CI=true)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[browser] chromium is missing and there is no apt-get here: install chromium by hand" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show chromium >/dev/null 2>&1; then
    echo "[browser] apt-get update (the package index does not know chromium yet)"
    apt-get update -qq
fi
echo "[browser] apt-get install chromium"
apt-get install -y -q --no-install-recommends chromium
if ! command -v chromium >/dev/null 2>&1; then
    echo "[browser] apt-get ran but chromium is still not on PATH" >&2
    exit 1
fi
echo "[browser] installed: $(command -v chromium)"
