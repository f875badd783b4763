#!/usr/bin/env bash
# The main job in its short form (about 15 minutes on 2 cores): ElasticFace-Arc on the real
# training identities, then verification on held-out LFW pairs. The full 45-minute runs of
# every head are the configs in configs/ (see docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked -p elasticface
output="${1:-runs/quick-elastic-arc}"
target/debug/elasticface train --config configs/elastic-arc.toml \
    --output "$output" --max-minutes 13 --eval-untrained
