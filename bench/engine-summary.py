#!/usr/bin/env python3
"""Summarises the last `cargo bench -p reprise --bench engine` run (criterion's estimates in
target/criterion) as operations per second, with Reprise's ratio to each baseline."""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
if not root.is_dir():
    sys.exit("no criterion results: run cargo bench -p reprise --bench engine first")

groups = {}
for est in sorted(root.glob("*/*/new/estimates.json")):
    group, bench = est.parts[-4], est.parts[-3]
    if group.startswith("mixed_") or group.startswith("tls13") or group.startswith("flush"):
        median_ns = json.loads(est.read_text())["median"]["point_estimate"]
        groups.setdefault(group, {})[bench] = median_ns

for group, benches in groups.items():
    print(group)
    ours = benches.get("reprise")
    for bench, ns in sorted(benches.items(), key=lambda kv: kv[1]):
        if group.startswith("flush"):
            line = f"  {bench:<16} {ns / 1e6:10.2f} ms per flush"
        else:
            line = f"  {bench:<16} {1e9 / ns / 1e6:10.3f} M ops/s"
        if ours and bench != "reprise":
            line += f"   reprise is {ns / ours:6.2f}x"
        print(line)
