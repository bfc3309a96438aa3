#!/usr/bin/env bash
# Device calls 53-55 (eighth session): call 51's search again (issue #6 item 2 at 180 s trials, two per GPU, one
# H100) after the fix for its failed trial: a trial that ASHA stopped kept its GPU memory while the next one warmed
# up (search.tune.trainable.frames_released_on_exit). All seven presets this time, so every hand-found shape gets its
# 120 s rung. About 20 minutes with the set-up. Run in consecutive calls until it prints "done: 0".
TAG=c52 N=h100_overhead180_fixed PER_GPU=2 CPUS=8 TRIALS=7 BUDGET_S=180 GRACE_S=120 WARMDOWN=750
source benchmarks/search24_one_gpu.sh
