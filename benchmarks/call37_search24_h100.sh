#!/usr/bin/env bash
# Device calls 37-38 (one H100, sixth session; the 2- and 4-GPU kinds were not lent): issue #6 item 3 on the
# one GPU there is. A compiled search over the default space, 24 trials at 60 s with three trials placed on the
# GPU (--trials-per-gpu 3): two start up and compile while the third trains, so new shapes' cold compiles
# (~50-60 s each) hide behind training. Presets first, rungs after the round trip, one ASHA rung at 30 s
# (budget/2: a budget/9 rung pruned the deep loop that wins, calls 30-31). nvidia-smi samples the GPU every
# 2 s. About 20 minutes: run this script in consecutive calls until it prints "done: 0" (each call waits up to
# $WAIT_S seconds); each call sends back what the search has written so far.
S=/tmp/searches; N=h100_shared24
job() {
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > /tmp/c37/smi.csv &
  local smi=$!
  python3 -m search run --space spaces/default.yaml --name $N --trials 24 --budget-s 60 --grace-s 30 \
    --reduction-factor 3 --seed 0 --ray-address local --gpus-per-trial 1 --trials-per-gpu 3 --cpus-per-trial 5 \
    --enqueue-presets --data $DATA --tokenizer $TOK --storage $S --set train.batch_tokens=131072 \
    --set train.warmdown_steps=250 --set train.rung_roundtrip=true --set export.zstd_level=1 > /tmp/c37/search.log 2>&1
  local rc=$?
  kill $smi
  python3 -m search report $N --storage $S --format md --plot frontier.png > /tmp/c37/report.log 2>&1
  return $rc
}
source benchmarks/detached.sh
export S N
detached c37
grep -v "^\s*$" /tmp/c37/search.log | grep -i "trial .* completed\|error\|Traceback" | tail -n 12
python3 -m search status $N --storage $S 2>&1 | head -n 8
tail -n 3 /tmp/c37/report.log 2>/dev/null
tar -czf $OUT/c37_files.tgz -C / tmp/c37 $(cd / && find tmp/searches \( -name "train.log" -o -name "metrics.json" \
  -o -name "device_time.json" -o -name "failure.txt" -o -name "search.json" -o -name "study.db" -o -path "*/report/*" \) \
  | grep -v checkpoint) 2>/dev/null
ls -la $OUT
