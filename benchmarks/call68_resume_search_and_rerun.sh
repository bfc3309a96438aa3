#!/usr/bin/env bash
# Device calls 68+ (tenth session, one H100, a fresh machine): finish call 63's search and rerun its best.
# 1. `search resume` the 24-trial search at 180 s that call 63 stopped at 17 launched trials (its machine is held at
#    most 30 minutes). Its Tune and Optuna state came back without checkpoints: the three interrupted trials had
#    no rung yet, so they start again from scratch. Stopped after RESUME_S seconds (SIGINT) if not done.
# 2. `search rerun` the search's best (benchmarks/configs/search63_best.yaml) at --widest-bits against the baseline,
#    one seed at a time while the machine has time left, keeping call 58's three baseline runs (int8, same config).
# Prepare on this machine: the search state as .searchstate/c63_state.tgz (call 63's folder, checkpoints left out;
# packed, as the packs leave under 1 MB of the 64 MiB a call carries) and call 58's baseline runs in
# .searchstate/search63_best_180s/rerun/baseline. Carry .whl .raypack .searchpack .searchstate/c63_state.tgz
# .searchstate/search63_best_180s; run until it prints "done: 0".
S=/tmp/searches N=h100_search24_180s R=search63_best_180s RESUME_S=900 END_S=1560
job() {
  local t0=$SECONDS
  mkdir -p $S && tar -xzf .searchstate/c63_state.tgz -C $S && cp -r .searchstate/$R $S/
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > /tmp/c68/smi.csv &
  local smi=$!
  timeout -s INT -k 120 $RESUME_S python3 -m search resume $N --storage $S > /tmp/c68/resume.log 2>&1
  echo "resume rc=$?" >> /tmp/c68/resume.log
  kill $smi
  python3 -m search report $N --storage $S --format md --plot frontier.png > /tmp/c68/report.log 2>&1
  for k in 1 2 3; do  # a seed takes ~300 s (compile, 180 s of training, evaluation, export)
    [ $((SECONDS - t0)) -lt $((END_S - 300)) ] || break
    python3 -m search rerun $R --config benchmarks/configs/search63_best.yaml --widest-bits --gpus 1 --parallel 1 \
      --budget-s 180 --seeds $k --seed-base 1338 --set train.batch_tokens=131072 --set train.warmdown_steps=750 \
      --data $DATA --tokenizer $TOK --storage $S >> /tmp/c68/rerun.log 2>&1
  done
}
source benchmarks/detached.sh
export S N R RESUME_S END_S
detached c68
export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled
tail -n 4 /tmp/c68/resume.log
python3 -m search status $N --storage $S 2>&1 | head -n 8
N=$R rerun_outputs c68
tar -czf $OUT/c68_search_files.tgz -C / $(search_files tmp/searches/$N) 2>/dev/null
ls -la $OUT
