#!/usr/bin/env bash
# Device call 14 (nvidia-h200-x2): issue #6 items 3-4, a Ray Tune + Optuna (TPE) + ASHA search over the
# default space on the textmix corpus, one trial per GPU (two at a time), 45 training seconds per trial
# (ASHA rungs at 5 s and 15 s, reports every 5 s for the fidelity table). Trials run eager
# (train.compile=false): at 45 s a cold compile of each new shape (38-61 s in call 12) costs more than the
# 2x slower eager step. 131,072-token steps give ~10x more steps than the 524,288 default in that time.
# The driver gets SIGINT at 470 s (Tune stops cleanly and keeps what finished); report, study and logs follow.
source benchmarks/device_packs_env.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
S=/tmp/searches; N=h200x2_default
echo "setup done at $(date -u +%T)"
timeout -s INT -k 60 470 python3 -m search run --space spaces/default.yaml --name $N --trials 40 \
  --budget-s 45 --reduction-factor 3 --seed 0 --ray-address local --gpus-per-trial 1 --cpus-per-trial 8 \
  --data $DATA --tokenizer $TOK --storage $S \
  --set train.compile=false --set train.compile_warmup_steps=1 --set train.batch_tokens=131072 \
  --set train.warmdown_steps=100 > $OUT/search.log 2>&1
echo "search rc=$? at $(date -u +%T)"; tail -4 $OUT/search.log
python3 -m search status $N --storage $S > $OUT/status.txt 2>&1; tail -6 $OUT/status.txt
python3 -m search report $N --storage $S --format md --plot frontier.png > $OUT/report_stdout.txt 2>&1
tail -40 $OUT/report_stdout.txt
# One archive: the report folder, the study and settings (enough for `search rerun` elsewhere), each trial's
# train.log and failure.txt (no checkpoints or artifacts).
cd $S && tar -czf $OUT/search_files.tgz $N/report $N/study.db $N/search.json \
  $(find $N -name train.log -o -name failure.txt -o -name metrics.json | grep -v checkpoint) 2>/dev/null
du -sh $S; df -h /tmp | tail -1; ls -la $OUT
