#!/usr/bin/env bash
# Device call 17 (one H100; written 2026-11-24, NOT RUN yet: that session had no device time left): the
# export's time and bytes with export.zstd_level=1 against the default 22 (best of 22 and 1), baseline
# shape at int6, 20 s eager runs.
source benchmarks/device_env.sh
S="--config spaces/presets/baseline.yaml --set train.budget_s=20 --set train.warmdown_steps=40 --set train.compile=false"
train_run /tmp/c17 100 base_int6_level1 $S --set export.zstd_level=1
train_run /tmp/c17 100 base_int6_level22 $S
for n in base_int6_level1 base_int6_level22; do python3 -c "
import json; m = json.load(open('/tmp/c17/$n/metrics.json'))
print('$n', 'export_s %.2f eval_s %.2f wall_s %.1f train_s %.1f model_bytes %d steps %d' % (m['export_s'], m['eval_s'], m['wall_s'], m['train_s'], m['model_bytes'], m['steps']))
"; done
