#!/usr/bin/env bash
# Device calls 26-27 (one H100, fifth session): the compiled search's best at int6 (benchmarks/configs/
# loop45_untied_int6.yaml) against the baseline shape, 3 seeds each at 120 s, one run at a time, side by side on
# one machine. The rerun (~16 min) outlasts one call, so the first call starts it detached (setsid) and both
# calls wait for it, then copy what it wrote to $OUT; the second call finds it running and only waits.
S=/tmp/searches; N=loop45_int6
if [ ! -f /tmp/c26.started ]; then
  source benchmarks/device_packs_env.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
  touch /tmp/c26.started
  setsid nohup bash -c "python3 -m search rerun $N --config benchmarks/configs/loop45_untied_int6.yaml \
    --gpus 1 --parallel 1 --budget-s 120 --seeds 3 --data $DATA --tokenizer $TOK --storage $S \
    > /tmp/c26_rerun.log 2>&1; echo \$? > /tmp/c26.done" < /dev/null > /dev/null 2>&1 &
fi
end=$((SECONDS + ${WAIT_S:-540}))
while [ $SECONDS -lt $end ] && [ ! -f /tmp/c26.done ]; do sleep 5; done
echo "done: $(cat /tmp/c26.done 2>/dev/null || echo 'not yet')"
cp /tmp/c26_rerun.log $OUT/rerun.log
grep -h "training done\|val_bpb" $S/$N/rerun/*/*/train.log 2>/dev/null | tail -20
R=$S/$N/rerun; cp $R/rerun.md $R/rerun.json $OUT/ 2>/dev/null
tar -czf $OUT/rerun_files.tgz -C $S $(cd $S && find $N -path "*rerun*" \( -name "*.log" -o -name metrics.json -o -name "rerun.*" -o -name "*.yaml" \) | grep -v checkpoint) 2>/dev/null
tail -30 $OUT/rerun.log
