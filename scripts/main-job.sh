#!/usr/bin/env bash
# The main job (about 15 minutes on 2 cores): ElasticFace-Arc for one epoch on the real training
# identities, then verification on held-out LFW pairs, next to the untrained network. The same run
# with every head is scripts/compare-heads.sh (docs/results.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked -p elasticface
output="${1:-runs/main-job}"
target/debug/elasticface train --config configs/elastic-arc.toml \
    --output "$output" --eval-untrained
