#!/usr/bin/env bash
# Build llama.cpp's reference tools from the llama-cpp-python sdist (see shared/BENCHMARKING.md).
#
#   bench/llama_cpp.sh            # build llama-bench, llama-quantize, llama-completion, llama-perplexity,
#                                 # then llama-server
#   bench/llama_cpp.sh --no-server
#   JOBS=1 bench/llama_cpp.sh     # parallel build jobs (default 2), run under `nice -n 10`
#   LLAMA_CPP_AMX=1 bench/llama_cpp.sh   # keep ggml's AMX kernels (off by default, see below)
#
# ggml's AMX int8 kernels (quantised types only: Q4_x, Q8_0, K-quants) die with SIGILL on `tilezero`
# on the Intel AMX VMs here (llama.cpp 0.3.36's vendored ggml; upstream PR ggml-org/llama.cpp#26954:
# tile config and XTILEDATA permission per worker thread). So the build compiles with
# -mno-amx-{tile,int8,bf16} unless LLAMA_CPP_AMX=1; the F32/BF16 paths never use AMX in ggml, and
# the quantised ones then run ggml's AVX-512 (VNNI) kernels. A binary built with other flags than
# asked (a `.flags` stamp beside each build folder) is rebuilt.
#
# Everything lives in the git-ignored .cache/llama.cpp/ (never commit llama.cpp's code or
# binaries). Idempotent: the download, the unpack, the configure and each built binary are
# skipped when already present. The last lines printed are `NAME=PATH` for each tool, which
# bench/generate.py also finds on its own (it looks in the same folders).
#
# llama-completion (non-interactive generation: `-no-cnv --temp 0` prints greedy tokens; this
# llama.cpp has no llama-simple among the tools, and llama-cli needs the server build) is what
# tests/interop/test_gguf_export.py runs against our GGUF export; llama-perplexity gives the
# quality table. Both are extra targets in the same build/ folder, so adding them is incremental.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/llama.cpp"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
SERVER=1
[[ "${1:-}" == "--no-server" ]] && SERVER=0

mkdir -p "$CACHE"
cd "$CACHE"

SDIST="llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
  echo "== downloading $SDIST (sdist, no deps)"
  "$PY" -m pip download --no-deps --no-binary :all: --no-build-isolation \
      "llama-cpp-python==$VERSION" -d "$CACHE" >/dev/null 2>pip-download.log \
    || "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE"
fi
[[ -f "$SDIST" ]] || { echo "sdist $SDIST not found in $CACHE" >&2; exit 1; }

SRC="$CACHE/src-$VERSION"
if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
  echo "== unpacking vendor/llama.cpp"
  rm -rf "$SRC" "$CACHE/unpack"
  mkdir -p "$CACHE/unpack"
  tar -xzf "$SDIST" -C "$CACHE/unpack" "llama_cpp_python-$VERSION/vendor/llama.cpp"
  mv "$CACHE/unpack/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC"
  rm -rf "$CACHE/unpack"
fi

COMMON=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF
        -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF)
if [[ "${LLAMA_CPP_AMX:-0}" == 1 ]]; then
  ISA_FLAGS=""
else
  ISA_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
COMMON+=("-DCMAKE_C_FLAGS=$ISA_FLAGS" "-DCMAKE_CXX_FLAGS=$ISA_FLAGS")
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)

build() {  # build DIR SERVER_FLAG TARGET...
  local dir="$1" server="$2"; shift 2
  local missing=() stamp="$dir.flags" want="${COMMON[*]} -DLLAMA_BUILD_SERVER=$server"
  if [[ -f "$stamp" && "$(cat "$stamp")" != "$want" ]] || [[ -d "$dir" && ! -f "$stamp" ]]; then
    # Rebuild everything (the old binaries stay usable until the new ones are linked over them).
    echo "== $(basename "$dir"): built with other flags, reconfiguring"
    rm -f "$dir/CMakeCache.txt"
    missing=("$@")
  else
    for t in "$@"; do [[ -x "$dir/bin/$t" ]] || missing+=("$t"); done
  fi
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "== $(basename "$dir"): ${*} already built"
    return
  fi
  if [[ ! -f "$dir/CMakeCache.txt" ]]; then
    echo "== configuring $(basename "$dir")"
    mkdir -p "$dir"
    nice -n 10 cmake -S "$SRC" -B "$dir" "${GEN[@]}" "${COMMON[@]}" -DLLAMA_BUILD_SERVER="$server" \
      >"$dir.configure.log" 2>&1 || { tail -30 "$dir.configure.log" >&2; exit 1; }
    echo "$want" >"$stamp"
  fi
  echo "== building ${missing[*]} in $(basename "$dir") (-j$JOBS, log: $dir.build.log)"
  local t0=$SECONDS
  nice -n 10 cmake --build "$dir" -j"$JOBS" --target "${missing[@]}" >"$dir.build.log" 2>&1 \
    || { tail -30 "$dir.build.log" >&2; exit 1; }
  echo "== built in $((SECONDS - t0)) s"
}

TOOLS=(llama-bench llama-quantize llama-completion llama-perplexity)
build "$CACHE/build" OFF "${TOOLS[@]}"
[[ $SERVER == 1 ]] && build "$CACHE/build-server" ON llama-server

for t in "${TOOLS[@]}"; do echo "$t=$CACHE/build/bin/$t"; done
if [[ -x "$CACHE/build-server/bin/llama-server" ]]; then
  echo "llama-server=$CACHE/build-server/bin/llama-server"
fi
