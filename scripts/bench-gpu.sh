#!/usr/bin/env bash
# The benchmarks on a machine with a GPU, in one go: build, then time the margin loss (fused
# WGSL kernels against burn tensor operations) and a training step on the wgpu adapter.
# About 5 minutes on a 16-core machine with a warm cargo registry, most of it the build.
# Extra arguments go to `elasticface bench head`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked -p elasticface
bin=target/debug/elasticface
"$bin" bench head --backend wgpu --json bench-head.json "$@"
"$bin" bench train --backend wgpu --backbones mobilefacenet,iresnet50 --batch-sizes 128 \
    --classes 10000 --json bench-train.json
