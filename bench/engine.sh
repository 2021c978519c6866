#!/usr/bin/env bash
# Runs the engine benchmarks several times (the machine is shared and noisy) and prints, for
# each benchmark, the median over the runs of operations per second and of Reprise's ratio to
# each baseline, all measured in the same runs.
# Usage: bench/engine.sh [runs, default 3] [criterion filter, default: everything]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
filter=${2:-}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for i in $(seq "$runs"); do
  echo "run $i of $runs" >&2
  cargo bench -q -p reprise --bench engine -- ${filter:+"$filter"} 2>&1 | grep "hit rate" >&2 || true
  python3 bench/engine-summary.py --json > "$out/run$i.json"
done
python3 bench/engine-summary.py --median "$out"/run*.json
