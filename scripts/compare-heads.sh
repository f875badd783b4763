#!/usr/bin/env bash
# Every head of the comparison in docs/results.md, one after the other with the same data,
# seed and number of steps (about 15 minutes each on 2 cores), then the raw-pixel baseline.
# Each run writes runs/<head>/ (summary.json, metrics.csv, curves.png); a finished run is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked -p elasticface
bin=target/debug/elasticface
mkdir -p runs
for head in elastic-arc arcface cosface elastic-cos elastic-arc-plus; do
    if [ -f "runs/$head/summary.json" ]; then
        echo "runs/$head is done; skipping"
        continue
    fi
    rm -rf "runs/$head"
    extra=()
    if [ "$head" = elastic-arc ]; then extra=(--eval-untrained); fi
    "$bin" train --config "configs/$head.toml" "${extra[@]}" 2>&1 | tee "runs/$head.log"
done
"$bin" eval --raw-pixels --pairs ../shared/data/lfw150/pairs.txt --tune-folds 9 --test-folds 10 \
    --json runs/raw-pixels.json
