#!/usr/bin/env python3
"""Summarises `cargo bench -p reprise --bench engine` (criterion's estimates in
target/criterion) as operations per second, with Reprise's ratio to each baseline.

  engine-summary.py                  the last run, as a table
  engine-summary.py --json           the last run, as JSON (one object per benchmark group)
  engine-summary.py --median A B ..  the medians over several --json outputs: ops/s, and the
                                     per-run ratios (each measured within one run)
"""
import json
import pathlib
import statistics
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def last_run():
    if not ROOT.is_dir():
        sys.exit("no criterion results: run cargo bench -p reprise --bench engine first")
    groups = {}
    for est in sorted(ROOT.glob("*/*/new/estimates.json")):
        group, bench = est.parts[-4], est.parts[-3]
        if group.startswith(("mixed_", "tls13", "flush")):
            groups.setdefault(group, {})[bench] = json.loads(est.read_text())["median"]["point_estimate"]
    return groups


def table(groups, ratios=None):
    for group, benches in sorted(groups.items()):
        print(group)
        ours = benches.get("reprise")
        for bench, ns in sorted(benches.items(), key=lambda kv: kv[1]):
            if group.startswith("flush"):
                line = f"  {bench:<16} {ns / 1e6:10.2f} ms per flush"
            else:
                line = f"  {bench:<16} {1e9 / ns / 1e6:10.3f} M ops/s"
            if ours and bench != "reprise":
                r = ratios[group][bench] if ratios else ns / ours
                line += f"   reprise is {r:6.2f}x"
            print(line)


def main():
    args = sys.argv[1:]
    if args[:1] == ["--json"]:
        print(json.dumps(last_run()))
    elif args[:1] == ["--median"]:
        runs = [json.loads(pathlib.Path(p).read_text()) for p in args[1:]]
        groups, ratios = {}, {}
        for group in runs[0]:
            present = [r[group] for r in runs if group in r]
            groups[group] = {b: statistics.median(r[b] for r in present if b in r) for b in present[0]}
            ratios[group] = {
                b: statistics.median(r[b] / r["reprise"] for r in present if b in r and "reprise" in r)
                for b in present[0]
                if b != "reprise"
            }
        print(f"medians over {len(runs)} runs; ratios are medians of per-run ratios")
        table(groups, ratios)
    else:
        table(last_run())


main()
