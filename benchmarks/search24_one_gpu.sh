# Sourced by call37_search24_h100.sh, call38_search24_h100.sh, call44_search24_full_data.sh,
# call51_overhead_180s.sh, call52_overhead_180s_fixed.sh, call63_search24_180s.sh, call72_search24_180s_rung60.sh and search24_180s_cooldown.sh and fidelity_study_180s.sh, which set TAG (their /tmp folder and archive name), N
# (the search's name), PER_GPU
# (--trials-per-gpu) and CPUS (--cpus-per-trial), and may set TRIALS, BUDGET_S, GRACE_S and WARMDOWN (defaults:
# 24 trials at 60 s, one ASHA rung at 30 s, 250 warmdown steps: calls 37-47), EXTRA_ARGS (more `search run` flags), and LIMIT_S (default 0: none), after
# which the driver gets SIGINT, as Ctrl-C, and the report covers the trials finished by then (a machine is held at
# most 30 minutes). A compiled search over the default
# space on one GPU, presets first, rungs after the round trip (a budget/9 rung pruned the deep loop that wins,
# calls 30-31, hence the late rung), nvidia-smi sampling the GPU every 2 s. Run the calling script in consecutive
# calls until it prints "done: 0" (each call waits up to $WAIT_S seconds); each call sends back what the search has
# written so far.
S=/tmp/searches
job() {
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > /tmp/$TAG/smi.csv &
  local smi=$!
  timeout -s INT -k 120 ${LIMIT_S:-0} python3 -m search run --space spaces/default.yaml --name $N --trials ${TRIALS:-24} --budget-s ${BUDGET_S:-60} \
    --grace-s ${GRACE_S:-30} --reduction-factor 3 --seed 0 --ray-address local --gpus-per-trial 1 --trials-per-gpu $PER_GPU \
    --cpus-per-trial $CPUS --enqueue-presets --data $DATA --tokenizer $TOK --storage $S \
    --set train.batch_tokens=131072 --set train.warmdown_steps=${WARMDOWN:-250} --set train.rung_roundtrip=true \
    --set export.zstd_level=1 $EXTRA_ARGS > /tmp/$TAG/search.log 2>&1
  local rc=$?
  kill $smi
  python3 -m search report $N --storage $S --format md --plot frontier.png > /tmp/$TAG/report.log 2>&1
  return $rc
}
source benchmarks/detached.sh
export S N TAG PER_GPU CPUS TRIALS BUDGET_S GRACE_S WARMDOWN LIMIT_S EXTRA_ARGS
detached $TAG
export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled  # a later call's shell: the packs are installed already
grep -v "^\s*$" /tmp/$TAG/search.log | grep -i "trial .* completed\|error\|Traceback" | tail -n 12
python3 -m search status $N --storage $S 2>&1 | head -n 8
tail -n 3 /tmp/$TAG/report.log 2>/dev/null
tar -czf $OUT/${TAG}_files.tgz -C / tmp/$TAG $(search_files) 2>/dev/null
# The search folder less checkpoints (study, settings, Tune's state): what `search resume` needs on another machine.
tar --exclude='checkpoint_*' --exclude='*.ptz' --exclude='*.pt' -czf $OUT/${TAG}_state.tgz -C / tmp/searches/$N 2>/dev/null
ls -la $OUT
