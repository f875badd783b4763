#!/usr/bin/env bash
# Times the embedding of one aligned face in headless Chromium: face-api's recognition net
# (@vladmandic/face-api) on the tfjs backends cpu, wasm, webgl and webgpu, then our page (dist/,
# built by scripts/web-build.sh; skipped with a message when it is not built) on its CPU and
# WebGPU backends. Prints a table and writes bench/face-api/results.json.
# Environment: RUNS, WARMUP, FACE, FREXAMPLES, DIST, CHROMIUM, ONLY=face-api|ours (see the script).
set -euo pipefail
cd "$(dirname "$0")/../bench/face-api"

if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    apt-get install -y chromium
fi
# playwright-core drives the system's Chromium and never downloads a browser.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund
node embed-bench.mjs
