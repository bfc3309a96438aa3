# Sourced by device calls whose job outlasts one 10-minute call. The caller defines `job` (a shell function, which may
# call other functions the caller defines), then `detached TAG`: the first call on a machine installs the packs
# (benchmarks/device/device_packs_env.sh), starts `job` under setsid (it survives the call) with /tmp/TAG/ for its
# files; every call then waits up to $WAIT_S seconds (default 540) for it to end and says whether it has.
detached() {
  local tag=$1
  if [ ! -f /tmp/$tag.started ]; then
    source benchmarks/device/device_packs_env.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
    mkdir -p /tmp/$tag; touch /tmp/$tag.started
    declare -f > /tmp/$tag.functions.sh  # job and every function it calls
    setsid nohup bash -c "source /tmp/$tag.functions.sh; job; echo \$? > /tmp/$tag.done" < /dev/null \
      > /tmp/$tag/job.log 2>&1 &
  fi
  local end=$((SECONDS + ${WAIT_S:-540}))
  while [ $SECONDS -lt $end ] && [ ! -f /tmp/$tag.done ]; do sleep 5; done
  echo "done: $(cat /tmp/$tag.done 2>/dev/null || echo 'not yet')"
}

# After `detached TAG` in a rerun's call: the runs' result lines, the rerun log's tail, and an archive of /tmp/TAG and
# every rerun's logs, metrics and configs under /tmp/searches as $OUT/TAG_files.tgz (checkpoints left out).
rerun_outputs() {
  local tag=$1
  grep -h "training done\|val_bpb" $S/$N/rerun/*/*/train.log 2>/dev/null | tail -n 12
  tail -n 25 /tmp/$tag/rerun.log
  tar -czf $OUT/${tag}_files.tgz -C / tmp/$tag $(cd / && find tmp/searches -path "*rerun*" \( -name "*.log" \
    -o -name metrics.json -o -name "rerun.*" -o -name "*.yaml" \) | grep -v checkpoint) 2>/dev/null
}

# The files of a search worth sending back, as paths under /: every trial's train.log, metrics.json,
# device_time.json and failure.txt, the search's settings, study and report (checkpoints left out). $1: the folder
# under / to look in (default tmp/searches, every search there).
search_files() {
  (cd / && find ${1:-tmp/searches} \( -name "train.log" -o -name "metrics.json" -o -name "device_time.json" \
    -o -name "failure.txt" -o -name "search.json" -o -name "study.db" -o -path "*/report/*" \) | grep -v checkpoint)
}
