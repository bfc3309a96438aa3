# Sourced by device calls whose job outlasts one 10-minute call. The caller defines `job` (a shell function),
# then `detached TAG`: the first call on a machine installs the packs (benchmarks/device_packs_env.sh), starts
# `job` under setsid (it survives the call) with /tmp/TAG/ for its files; every call then waits up to $WAIT_S
# seconds (default 540) for it to end and says whether it has.
detached() {
  local tag=$1
  if [ ! -f /tmp/$tag.started ]; then
    source benchmarks/device_packs_env.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
    mkdir -p /tmp/$tag; touch /tmp/$tag.started
    export -f job
    setsid nohup bash -c "job; echo \$? > /tmp/$tag.done" < /dev/null > /tmp/$tag/job.log 2>&1 &
  fi
  local end=$((SECONDS + ${WAIT_S:-540}))
  while [ $SECONDS -lt $end ] && [ ! -f /tmp/$tag.done ]; do sleep 5; done
  echo "done: $(cat /tmp/$tag.done 2>/dev/null || echo 'not yet')"
}
