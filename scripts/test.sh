#!/usr/bin/env bash
# The test suite: unit tests of core and the trainer, the wgpu-against-CPU check on whichever
# adapter exists (lavapipe without a GPU), and the end-to-end training run on ORL.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked "$@"
