#!/usr/bin/env bash
# Builds the compare-two-photos page (web/, index.html) with Trunk into dist/, offline.
# Installs what is missing first: the wasm32 target, Trunk 0.21.14 and wasm-bindgen-cli at the
# version Cargo.lock pins (each a 10-20 minute compile on 2 cores, once). Without a model at
# assets/model/model.safetensors it writes an untrained development model there.
#
#   scripts/web-build.sh            # then serve dist/ with any static server
#
# The wasm build uses its own target folder (target/web, or $WEB_TARGET_DIR) so that it never
# waits on the lock of a native workspace build running at the same time.
set -euo pipefail
cd "$(dirname "$0")/.."

TRUNK_VERSION=0.21.14
WASM_BINDGEN_VERSION=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
export PATH="$HOME/.cargo/bin:$PATH"

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
if ! trunk --version 2>/dev/null | grep -q " $TRUNK_VERSION"; then
    cargo install trunk --version "$TRUNK_VERSION" --locked
fi
# Without --locked: wasm-bindgen-cli's own lock file names a version missing from the registry.
if ! wasm-bindgen --version 2>/dev/null | grep -q " $WASM_BINDGEN_VERSION"; then
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

if [ ! -f assets/model/model.safetensors ]; then
    echo "web-build: no assets/model/model.safetensors; writing an untrained development model" >&2
    # --workspace keeps burn's features those of the workspace, so a tested tree rebuilds nothing.
    cargo build --workspace --example reference
    target/debug/examples/reference dev-model assets/model/model.safetensors
fi

cargo fetch --target wasm32-unknown-unknown
start=$(date +%s)
CARGO_TARGET_DIR="${WEB_TARGET_DIR:-target/web}" TRUNK_SKIP_VERSION_CHECK=true trunk build
echo "web-build: built in $(( $(date +%s) - start )) s" >&2

wasm=$(ls dist/*.wasm)
echo "web-build: $wasm $(stat -c %s "$wasm") bytes ($(gzip -9 -c "$wasm" | wc -c) gzipped);" \
    "model $(stat -c %s dist/model/model.safetensors) bytes" >&2
