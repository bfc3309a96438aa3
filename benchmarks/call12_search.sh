#!/usr/bin/env bash
# Device call 12 (one H100): a real Ray Tune + Optuna (TPE) + ASHA search over spaces/width512.yaml on the
# textmix corpus, trials of 30 training seconds (rungs at 3.3 s and 10 s), regional compilation so every
# trial reuses one compiled layer graph. Carries: .whl (zstandard), .raypack (ray 2.60 stripped + optuna and
# deps, see its install.sh), .searchpack (val + train shards 0-1 + tokenizer, zstd-compressed tar).
# The driver gets SIGINT at 430 s (Tune stops cleanly and keeps what finished); the report follows.
source benchmarks/device_packs_env.sh
S=/tmp/searches
timeout -s INT 430 python3 -m search run --space spaces/width512.yaml --name h100_width512 --trials 24 \
  --budget-s 30 --reduction-factor 3 --seed 0 --ray-address local --gpus-per-trial 1 --cpus-per-trial 8 \
  --data $DATA --tokenizer $TOK --storage $S \
  --set train.compile_scope=layers --set train.warmdown_steps=40 > $OUT/search.log 2>&1
echo "search rc=$?"; tail -5 $OUT/search.log
python3 -m search status h100_width512 --storage $S > $OUT/status.txt 2>&1; cat $OUT/status.txt | tail -40
python3 -m search report h100_width512 --storage $S --format md --plot frontier.png > $OUT/report_stdout.txt 2>&1
tail -30 $OUT/report_stdout.txt
R=$S/h100_width512/report; ls $R
cp $R/frontier.png $R/summary.json $R/frontier.csv $OUT/ 2>/dev/null
cp $R/*.md $OUT/report.md 2>/dev/null
