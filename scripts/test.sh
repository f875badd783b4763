#!/usr/bin/env bash
# The test suite: unit tests of core and the trainer, the wgpu-against-CPU check on whichever
# adapter exists (lavapipe without a GPU), the end-to-end runs on the real face sets, and a check
# that core (with its wgpu kernels) still builds for the browser.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked "$@"
rustup target add wasm32-unknown-unknown
cargo check --locked -p elasticface-core --features wgpu --target wasm32-unknown-unknown
