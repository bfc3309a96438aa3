#!/usr/bin/env bash
# Device calls 76+ (a later session, one H100, a fresh machine): finish call 72's 24-trial search at 180 s (one
# ASHA rung at 60 s) from its study alone. Its Tune state did not come back (the files sent back are the study,
# settings and logs), so `search resume --from-study`: its three trials in flight start again as new trials and
# ten more launch. No trial starts after 20 minutes (--drain-after-s); --stop-after-s is the backstop before the
# machine goes back (held at most 30 minutes). Then the
# report, and the 60 s rung's fidelity pooled with call 63's search (its study is in call 68's files). Nothing to
# prepare: both searches' files are tracked. Carry .whl in a first call, then .raypack .searchpack; run until it
# prints "done: 0".
S=/tmp/searches N=h100_search24_180s_r60 DRAIN_S=1200 STOP_S=1500
job() {
  mkdir -p $S
  tar -xzf benchmarks/results/call72/c72_files.tgz -C / tmp/searches
  tar -xzf benchmarks/results/call68/c68_search_files.tgz -C /
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > /tmp/c76/smi.csv &
  local smi=$!
  python3 -m search resume $N --from-study --drain-after-s $DRAIN_S --stop-after-s $STOP_S --storage $S \
    > /tmp/c76/resume.log 2>&1
  local rc=$?
  kill $smi
  python3 -m search report $N --storage $S --format md --plot frontier.png > /tmp/c76/report.log 2>&1
  python3 -m search fidelity h100_search24_180s $N --storage $S --out /tmp/c76 > /tmp/c76/fidelity.log 2>&1
  return $rc
}
source benchmarks/detached.sh
export S N DRAIN_S STOP_S
detached c76
export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled
grep -i "going on\|trial .* completed\|error\|Traceback" /tmp/c76/resume.log | tail -n 12
python3 -m search status $N --storage $S 2>&1 | head -n 8
cat /tmp/c76/fidelity.log 2>/dev/null
tar -czf $OUT/c76_files.tgz -C / tmp/c76 $(search_files tmp/searches/$N) 2>/dev/null
# The whole search folder less checkpoints: enough for `resume --from-study`, and for `resume` if carried back.
tar --exclude='checkpoint_*' -czf $OUT/c76_state.tgz -C / tmp/searches/$N 2>/dev/null
ls -la $OUT
