# Sourced by finish_search72.sh and fidelity_study_180s_resume.sh, which set TAG (their /tmp folder and archive
# name), N (the search), STATES (archives under the repo whose tmp/searches/... paths hold that search's folder,
# and any other searches to pool) and may set POOL (searches whose rung fidelity is pooled with N's, `search
# fidelity`), DRAIN_S (default 1050) and STOP_S (default 1500). On a fresh machine: goes on with the search from
# its study alone (`search resume --from-study`: a trial in flight when it stopped starts again as a new trial),
# no new trial after DRAIN_S, the driver's stop at STOP_S as the backstop before the machine goes back (held at
# most 30 minutes), nvidia-smi sampling every 2 s. Then the report, and the pooled fidelity. Carry .whl in a
# first call, then .raypack .searchpack; run the calling script in consecutive calls until it prints "done: 0".
S=/tmp/searches
job() {
  mkdir -p $S
  for state in $STATES; do tar -xzf $state -C / tmp/searches; done
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > /tmp/$TAG/smi.csv &
  local smi=$!
  python3 -m search resume $N --from-study --drain-after-s ${DRAIN_S:-1050} --stop-after-s ${STOP_S:-1500} \
    --storage $S > /tmp/$TAG/resume.log 2>&1
  local rc=$?
  kill $smi
  python3 -m search report $N --storage $S --format md --plot frontier.png > /tmp/$TAG/report.log 2>&1
  [ -z "$POOL" ] || python3 -m search fidelity $POOL $N --storage $S --out /tmp/$TAG > /tmp/$TAG/fidelity.log 2>&1
  return $rc
}
source benchmarks/detached.sh
export S N TAG STATES POOL DRAIN_S STOP_S
detached $TAG
export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled  # a later call's shell: the packs are installed already
grep -i "going on\|trial .* completed\|error\|Traceback" /tmp/$TAG/resume.log | tail -n 12
python3 -m search status $N --storage $S 2>&1 | head -n 8
cat /tmp/$TAG/fidelity.log 2>/dev/null
tar -czf $OUT/${TAG}_files.tgz -C / tmp/$TAG $(search_files tmp/searches/$N) 2>/dev/null
# The whole search folder less checkpoints: enough for `resume --from-study`, and for `resume` if carried back.
tar --exclude='checkpoint_*' --exclude='*.ptz' --exclude='*.pt' -czf $OUT/${TAG}_state.tgz -C / tmp/searches/$N 2>/dev/null
ls -la $OUT
