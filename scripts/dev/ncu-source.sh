#!/bin/bash
# Per-instruction warp-stall samples of one dense decode launch (ncu source page, SASS), for
# scripts/dev/sass_hotspots.py. Run on the GPU machine with build/bench/openmla-bench carried;
# CELL picks the bench configuration. Writes $OUT/sass.csv (and details.txt); ~1 minute.
CELL=${CELL:-"b=128 h_q=128 s_q=1 s_k=8192"}
export OPENMLA_BENCH_NO_CEILINGS=1
timeout 300 ncu -k regex:dense_decode_kernel --launch-skip 4 --launch-count 1 \
  --section SourceCounters --section WarpStateStats -o "$OUT/rep" \
  build/bench/openmla-bench --suite dense-decode --quick --only "$CELL" > "$OUT/ncu-run.log" 2>&1
echo "ncu rc=$?"
ncu -i "$OUT/rep.ncu-rep" --page source --csv --print-source sass > "$OUT/sass.csv"
ncu -i "$OUT/rep.ncu-rep" --page details --print-details all > "$OUT/details.txt"
rm -f "$OUT/rep.ncu-rep"
