#!/usr/bin/env bash
# Device call 13 (nvidia-h200-x2, two H200s): issue #5's bar, `search rerun` with DDP across both GPUs:
# the call-12 search's best config against the baseline preset, 3 seeds each, 25 training seconds per run,
# then one baseline run on a single GPU of the same machine for the step time per GPU count.
source benchmarks/device_packs_env.sh  # call 13 ran it with install.sh's output sent to /dev/null
D="--data $DATA --tokenizer $TOK"
timeout 470 python3 -m search rerun search12_best --config benchmarks/configs/search12_best.yaml --gpus 2 \
  --budget-s 25 --seeds 3 --set train.warmdown_steps=40 $D --out /tmp/rerun > $OUT/rerun.log 2>&1
echo "rerun rc=$?"; tail -25 $OUT/rerun.log
cp /tmp/rerun/rerun.md /tmp/rerun/rerun.json $OUT/ 2>/dev/null; cat $OUT/rerun.md 2>/dev/null | head -60
CUDA_VISIBLE_DEVICES=0 timeout 100 python3 -m trainer train --config spaces/presets/baseline.yaml --set train.budget_s=25 \
  --set train.warmdown_steps=40 $D --out /tmp/one_gpu > $OUT/baseline_1gpu.log 2>&1
grep -E "training done|val_bpb" $OUT/baseline_1gpu.log
# Excludes before the path: placed after it in call 13, GNU tar ignored them (55 MB, not returned).
tar -czf $OUT/rerun_logs.tgz --exclude='*.ptz' --exclude='*.pt' -C /tmp rerun 2>/dev/null; ls -la $OUT
