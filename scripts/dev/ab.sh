#!/bin/bash
# Development A/B of kernel variants on the GPU machine (run through the device tool, with the
# variant binaries carried in exp-bins/, which .git/info/exclude keeps out of git):
#   exp-bins/bench-<V>   openmla-bench built for variant V (e.g. cmake -DOPENMLA_DECODE_EXP=N on
#                        a bench-only build dir, then copy build-*/bench/openmla-bench)
#   exp-bins/tests-<V>   optional: the GPU test binary of a variant (run with RUN_TESTS=V)
# Runs ROUNDS rounds of every variant in VARS (in that order; reverse the order in a second call
# to see power-state effects) over the quick-mode cells selected by ONLY (openmla-bench --only
# arguments, space separated, no spaces inside), and prints per cell and variant the JSON fields
# named in FIELDS (default: graph_us rested_us).
# Output (JSON, logs) under $OUT.
export OPENMLA_BENCH_NO_CEILINGS=1
VARS=${VARS:-"A B"}; ROUNDS=${ROUNDS:-2}
ONLY=${ONLY:-"--only s_k=4096 --only b=8"}
if [ -n "$RUN_TESTS" ]; then
  GTEST_FILTER='*Dense*' timeout 200 exp-bins/tests-$RUN_TESTS > "$OUT/tests.log" 2>&1
  echo "tests rc=$?"; grep -E "^\[  (PASSED|FAILED)|FAILED  \]" "$OUT/tests.log" | head
fi
for r in $(seq "$ROUNDS"); do for v in $VARS; do
  # shellcheck disable=SC2086
  timeout 150 exp-bins/bench-$v --suite dense-decode --suite dense-decode-latency --quick $ONLY \
    --json "$OUT/$v-$r.json" > "$OUT/$v-$r.log" 2>&1 || echo "bench $v rc=$?"
done; done
for field in ${FIELDS:-graph_us rested_us}; do
echo "== $field"
python3 - "$OUT" "$field" $VARS <<'PY'
import collections, glob, json, sys
out, field, vs = sys.argv[1], sys.argv[2], sys.argv[3:]
t = collections.defaultdict(dict)
for v in vs:
    for f in sorted(glob.glob(f"{out}/{v}-*.json")):
        for su in json.load(open(f)).get("suites", []):
            for r in su.get("results", []):
                t[r["config"]["label"]].setdefault(v, []).append(r.get(field))
for c, m in t.items():
    print(f"{c[:44]:44s} " + "  ".join(
        f"{v}:" + "/".join(f"{x:.1f}" for x in m.get(v, []) if x) for v in vs))
PY
done
