#!/usr/bin/env python3
"""Summarizes an ncu source-page CSV (scripts/dev/ncu-source.sh): stall samples by instruction
class and the hottest instructions with their two main stall reasons.

usage: sass_hotspots.py sass.csv [top_n]
"""
import collections
import csv
import sys

rows = list(csv.reader(open(sys.argv[1])))
top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 30
hdr, data = rows[1], rows[2:]
ix = {h: i for i, h in enumerate(hdr)}
reasons = [h for h in hdr if h.startswith("stall_") and "Not Issued" not in h]
samples = lambda r: float(r[ix["Warp Stall Sampling (All Samples)"]] or 0)
total = sum(samples(r) for r in data)
classes = collections.Counter()
for r in data:
    ins = r[1].strip()
    if "HGMMA" in ins:
        k = "HGMMA issue"
    elif "WARPGROUP.DEPBAR" in ins:
        k = "wgmma wait"
    elif "SYNCS.PHASECHK" in ins or ("BRA" in ins and float(r[ix["stall_long_sb"]] or 0) > 0.5 * samples(r) > 0):
        k = "mbarrier wait"
    elif "BAR." in ins or float(r[ix["stall_barrier"]] or 0) > 0.5 * samples(r) > 0:
        k = "named barrier"  # (samples land on the instruction after the BAR.SYNC)
    else:
        k = "other"
    classes[k] += samples(r)
print(f"{len(data)} instructions, {total:.0f} samples")
for k, v in classes.most_common():
    print(f"  {k:14s} {v:8.0f}  {100 * v / max(total, 1):5.1f} %")
print(f"hottest {top_n} (index, samples, instruction, main stall reasons):")
hot = sorted(range(len(data)), key=lambda i: -samples(data[i]))[:top_n]
for i in sorted(hot):
    r = data[i]
    rs = sorted(((float(r[ix[h]] or 0), h[6:]) for h in reasons), reverse=True)[:2]
    print(f"  {i:5d} {samples(r):6.0f}  {r[1].strip()[:72]:72s} "
          + " ".join(f"{n}:{v:.0f}" for v, n in rs))
