#!/usr/bin/env bash
# Builds the page and tests it in headless Chromium (tests/browser/compare-page.test.mjs):
# photos of one person and of two people, an undecodable file, a 6000×4000 photo, a WebGPU run,
# no foreign requests. Scores are checked against the native `reference` example on the same
# crops. Screenshots and report.json land in tests/browser/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/web-build.sh

# The page's pipeline, natively (unit tests), and the native reference the browser test uses.
# --workspace keeps burn's features those of the workspace build, so nothing is rebuilt.
cargo test --workspace --lib pipeline::tests
cargo build --workspace --example reference

if [ ! -x /usr/bin/chromium ]; then
    apt-get install -y chromium chromium-driver
fi
cd tests/browser
# playwright-core never downloads a browser; the test uses /usr/bin/chromium.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund
REFERENCE="$PWD/../../target/debug/examples/reference" node compare-page.test.mjs
