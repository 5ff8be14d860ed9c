#!/bin/bash
# Memory traffic and power of the dense decode attention kernel (GPU machine, build/ carried):
# 1. ncu (clocks left alone) DRAM/L2 counters of one attention launch per cell -> $OUT/ncu-*.csv
# 2. nvidia-smi power/clock samples (50 ms) while the bench replays each cell -> $OUT/smi-*.csv
# CELLS: bench labels separated by ';'. ~3-4 minutes for four cells.
CELLS=${CELLS:-"b=128 h_q=128 s_q=1 s_k=8192;b=128 h_q=128 s_q=2 causal s_k=8192"}
export OPENMLA_BENCH_NO_CEILINGS=1
M=dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_srcunit_tex_op_read.sum
M=$M,lts__t_sector_op_read_hit_rate.pct,gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second
IFS=';' read -ra LIST <<< "$CELLS"
i=0
for c in "${LIST[@]}"; do
  i=$((i + 1))
  timeout 240 ncu --clock-control none -k regex:dense_decode_kernel --launch-skip 4 \
    --launch-count 1 --metrics "$M" --csv \
    build/bench/openmla-bench --suite dense-decode --quick --only "$c" > "$OUT/ncu-$i.csv" 2>&1
  echo "== $c (ncu rc=$?)"
  grep -E "dram__|lts__|gpu__time|sm__cycles" "$OUT/ncu-$i.csv" | awk -F'","' '{print $(NF-2), $(NF-1), $NF}'
done
for c in "${LIST[@]}"; do
  i=$((i + 1))
  nvidia-smi --query-gpu=timestamp,power.draw,clocks.sm,clocks.mem,temperature.gpu,clocks_event_reasons.active \
    --format=csv -lms 50 > "$OUT/smi-$i.csv" 2>&1 &
  p=$!
  timeout 200 build/bench/openmla-bench --suite dense-decode --only "$c" 2>&1 | grep -E "graph" | cut -c1-150
  kill $p
  echo "== $c: power W / SM MHz samples (top 5 power, median):"
  tail -n +2 "$OUT/smi-$i.csv" | awk -F', ' '{print $2, $3, $6}' | sort -n | awk '{a[NR]=$0} END {print "n", NR, "median", a[int(NR/2)], "max", a[NR]}'
done
nvidia-smi -q -d POWER | grep -iE "limit|draw" | head
