#!/usr/bin/env bash
# Device call 18 (written 2026-11-24, NOT RUN yet; for the 2- or 4-GPU kinds): the search calls 14-16 call for.
# Trials compiled and at the rerun's budget (calls 15-16 showed that 45 s eager trials pick the wrong config),
# the presets first (--enqueue-presets: the baseline shape sits in the same table), rungs scored after the
# quantization round trip (so ASHA sees int5/int6), the fast level-1 export, warm workers (reuse_actors).
# Expect to run it over two calls: SIGINT at the time limit, then `python -m search resume h200_compiled`.
source benchmarks/device_packs_env.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
S=/tmp/searches; N=h200_compiled
timeout -s INT -k 60 480 python3 -m search run --space spaces/default.yaml --name $N --trials 32 \
  --budget-s 120 --reduction-factor 3 --seed 0 --ray-address local --gpus-per-trial 1 --cpus-per-trial 8 \
  --enqueue-presets --data $DATA --tokenizer $TOK --storage $S \
  --set train.batch_tokens=131072 --set train.warmdown_steps=500 --set train.rung_roundtrip=true \
  --set export.zstd_level=1 > $OUT/search.log 2>&1
echo "search rc=$?"; tail -4 $OUT/search.log
python3 -m search report $N --storage $S --format md --plot frontier.png > $OUT/report_stdout.txt 2>&1
tail -40 $OUT/report_stdout.txt
cd $S && tar -czf $OUT/search_files.tgz $N/report $N/study.db $N/search.json \
  $(find $N -name train.log -o -name failure.txt -o -name metrics.json | grep -v checkpoint) 2>/dev/null
