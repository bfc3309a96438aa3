#!/usr/bin/env bash
# Device calls 39-41 (one H100, sixth session): call 37's search again after its fix. In call 37 six of 24 trials
# ran out of GPU memory: three processes' warm-ups (15-36 GB each) beside a trial training, and a finished
# holder's cached blocks. Now two trials per GPU, a waiting trial may use half the GPU's memory (a warm-up past
# that waits for the turn and warms up again), and a holder empties its cache before handing the GPU on. Same
# space, budget, rungs and seed otherwise. Run in consecutive calls until it prints "done: 0".
S=/tmp/searches; N=h100_shared24b
job() {
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > /tmp/c38/smi.csv &
  local smi=$!
  python3 -m search run --space spaces/default.yaml --name $N --trials 24 --budget-s 60 --grace-s 30 \
    --reduction-factor 3 --seed 0 --ray-address local --gpus-per-trial 1 --trials-per-gpu 2 --cpus-per-trial 8 \
    --enqueue-presets --data $DATA --tokenizer $TOK --storage $S --set train.batch_tokens=131072 \
    --set train.warmdown_steps=250 --set train.rung_roundtrip=true --set export.zstd_level=1 > /tmp/c38/search.log 2>&1
  local rc=$?
  kill $smi
  python3 -m search report $N --storage $S --format md --plot frontier.png > /tmp/c38/report.log 2>&1
  return $rc
}
source benchmarks/detached.sh
export S N
detached c38
export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled
grep -v "^\s*$" /tmp/c38/search.log | grep -i "trial .* completed\|error\|Traceback" | tail -n 12
python3 -m search status $N --storage $S 2>&1 | head -n 8
tail -n 3 /tmp/c38/report.log 2>/dev/null
tar -czf $OUT/c38_files.tgz -C / tmp/c38 $(cd / && find tmp/searches \( -name "train.log" -o -name "metrics.json" \
  -o -name "device_time.json" -o -name "failure.txt" -o -name "search.json" -o -name "study.db" -o -path "*/report/*" \) \
  | grep -v checkpoint) 2>/dev/null
ls -la $OUT
