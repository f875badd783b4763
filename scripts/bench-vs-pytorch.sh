#!/usr/bin/env bash
# The training step of `elasticface bench train` next to the same step in PyTorch eager
# (bench/pytorch_step.py), on the CPU with the same thread count, then the ratio per row.
# Arguments go to both sides, e.g.:
#   scripts/bench-vs-pytorch.sh --backbones mobilefacenet --batch-sizes 64 --classes 3469 --warmup 1 --steps 3
# PYTHON names an interpreter with torch installed (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
"$python" -c "import torch" 2>/dev/null || {
    echo "$python has no torch; install it (pip install torch) or set PYTHON" >&2
    exit 1
}
cargo build --locked -p elasticface
out="$(mktemp -d)"
target/debug/elasticface bench train --backend cpu --json "$out/ours.json" "$@"
"$python" bench/pytorch_step.py --threads "$(nproc)" --json "$out/pytorch.json" "$@"
"$python" - "$out/ours.json" "$out/pytorch.json" <<'PY'
import json, sys
ours, theirs = (json.load(open(path)) for path in sys.argv[1:3])
print(f"{'backbone':<14} {'batch':>6} {'classes':>7} {'ours':>9} {'pytorch':>9} {'ours / pytorch time':>20}")
for a, b in zip(ours, theirs):
    print(f"{a['backbone']:<14} {a['batch_size']:>6} {a['classes']:>7} {a['step']:>8.3f}s {b['step']:>8.3f}s {a['step'] / b['step']:>19.2f}x")
PY
