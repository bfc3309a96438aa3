#!/usr/bin/env bash
# Device call 25 (a fresh H100; calls 21-24's machine had reached its 30-minute hold): the one rerun run that
# call 24 did not finish, the baseline shape's seed 1339, trained directly with the rerun's exact settings
# (its config line in the call-24 log); its metrics.json joins the rerun folder, whose statistics are then
# recomputed on the CPU by the same `search rerun` command (it keeps runs that have a metrics.json).
source benchmarks/device_env.sh
train_run /tmp/c25 330 baseline_seed1339 --config spaces/presets/baseline.yaml --set train.batch_tokens=131072 \
  --set train.warmdown_steps=500 --set train.rung_roundtrip=true --set train.seed=1339 --set train.budget_s=120 \
  --set train.compile=true --set train.compile_warmup_steps=5
rm -f $OUT/*.ptz
