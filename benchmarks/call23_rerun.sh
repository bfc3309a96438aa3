#!/usr/bin/env bash
# Device calls 23-24 (same warm H100 as calls 21-22): rerun call 21-22's best (trial 3) and the baseline shape,
# 3 seeds each, at the search's 120 s budget and train settings, one run at a time on the one GPU. Run twice:
# the second call keeps the runs that have a metrics.json and trains the rest.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
S=/tmp/searches; N=h100_compiled
timeout -k 20 ${RERUN_LIMIT_S:-540} python3 -m search rerun $N --best --gpus 1 --parallel 1 --budget-s 120 --seeds 3 \
  --data /tmp/sp/data --tokenizer /tmp/sp/fineweb_1024_bpe.model --storage $S > $OUT/rerun.log 2>&1
echo "rerun rc=$?"; tail -25 $OUT/rerun.log
R=$(ls -d $S/$N/rerun* 2>/dev/null | head -1); echo "rerun dir: $R"
cp $R/rerun.md $R/rerun.json $OUT/ 2>/dev/null
tar -czf $OUT/rerun_files.tgz -C $S $(cd $S && find $N -path "*rerun*" \( -name "*.log" -o -name metrics.json -o -name "rerun.*" \) | grep -v checkpoint) 2>/dev/null
