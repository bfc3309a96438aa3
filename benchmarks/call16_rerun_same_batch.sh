#!/usr/bin/env bash
# Device call 16 (nvidia-h200-x2, right after call 15 on the same warm machine): call 15 gave the baseline the
# default 524,288-token batch while the candidate kept the search's 131,072. This reruns the baseline with the
# candidate's batch; call 15's candidate runs are copied in and kept (same config), so only 3 runs train.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
mkdir -p /tmp/rerun16 && cp -r /tmp/rerun15/candidate /tmp/rerun16/
timeout 380 python3 -m search rerun h200x2_default --best --storage /tmp/searches --gpus 1 --parallel 2 \
  --budget-s 120 --seeds 3 --set train.compile=true --set train.compile_warmup_steps=5 \
  --set train.warmdown_steps=500 --set train.batch_tokens=131072 \
  --data /tmp/sp/data --tokenizer /tmp/sp/fineweb_1024_bpe.model --out /tmp/rerun16 > $OUT/rerun16.log 2>&1
echo rc=$?; grep "^\[rerun\]" $OUT/rerun16.log | tail -8
cp /tmp/rerun16/rerun.md /tmp/rerun16/rerun.json $OUT/ 2>/dev/null; sed -n 5,30p $OUT/rerun.md
tar -czf $OUT/rerun16_logs.tgz --exclude='*.ptz' --exclude='*.pt' -C /tmp rerun16 2>/dev/null
