#!/usr/bin/env bash
# Device call 21 (one H100, 2026-11-24 fourth session): the search calls 14-16 called for. Trials compiled at
# the rerun's 120 s budget, the seven presets first (--enqueue-presets), rungs scored after the quantization round
# trip, the level-1 export, Gaussian init with the size model refitted on it (calls 19-20).
# Part 1 of 2: SIGINT at 470 s; call 22 resumes it on the same warm machine.
source benchmarks/device_packs_env.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
S=/tmp/searches; N=h100_compiled
timeout -s INT -k 60 470 python3 -m search run --space spaces/default.yaml --name $N --trials 32 \
  --budget-s 120 --reduction-factor 3 --seed 0 --ray-address local --gpus-per-trial 1 --cpus-per-trial 8 \
  --enqueue-presets --data $DATA --tokenizer $TOK --storage $S \
  --set train.batch_tokens=131072 --set train.warmdown_steps=500 --set train.rung_roundtrip=true \
  --set export.zstd_level=1 > $OUT/search.log 2>&1
echo "search rc=$?"; tail -4 $OUT/search.log
python3 -m search report $N --storage $S --format md > $OUT/report_stdout.txt 2>&1
tail -30 $OUT/report_stdout.txt
