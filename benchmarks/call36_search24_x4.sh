#!/usr/bin/env bash
# Next device calls (not yet run; needs `nvidia-h200-x4`, not lent in the fourth to seventh sessions): issue #6
# item 3 as the issue states it, in one go. A compiled search over the default space at the rerun's 120 s budget,
# 32 trials (>= 24 finish), four at a time, the presets first, rungs after the round trip, the first ASHA rung at
# budget/3 (a budget/9 rung pruned the deep loop that wins, calls 30-31); then its best, exported at the widest
# bits that fit, against the baseline shape, 3 seeds each, four runs at a time. About 25 minutes: run this
# script in consecutive calls until it prints "done: 0" (each call waits up to $WAIT_S seconds).
S=/tmp/searches; N=x4_compiled
job() {
  python3 -m search run --space spaces/default.yaml --name $N --trials 32 --budget-s 120 --grace-s 40 \
    --reduction-factor 3 --seed 0 --ray-address local --gpus-per-trial 1 --cpus-per-trial 8 --enqueue-presets \
    --data $DATA --tokenizer $TOK --storage $S --set train.batch_tokens=131072 --set train.warmdown_steps=500 \
    --set train.rung_roundtrip=true --set export.zstd_level=1 > /tmp/c36/search.log 2>&1
  python3 -m search report $N --storage $S --format md > /tmp/c36/report.md 2>&1
  python3 -m search rerun $N --best --widest-bits --gpus 1 --parallel 4 --budget-s 120 --seeds 3 \
    --storage $S > /tmp/c36/rerun.log 2>&1
}
source benchmarks/detached.sh
export S N
detached c36
tail -n 4 /tmp/c36/search.log; tail -n 25 /tmp/c36/rerun.log 2>/dev/null
tar -czf $OUT/c36_files.tgz -C / tmp/c36 $(cd / && find tmp/searches -name "train.log" -o -name "metrics.json" -o -name "report.md" -o -name "summary.json" -o -name "frontier.png" -o -name "study.db" -o -name "rerun.*" | grep -v checkpoint) 2>/dev/null
