#!/usr/bin/env bash
# Device calls 51-52 (eighth session): issue #6 item 2 as the issue states it, the non-training share of 180 s trials,
# with two trials per GPU on one H100. Six trials at 180 s (the first six presets: each a new shape, so every
# compile is cold, the worst case), one ASHA rung at 120 s, 750 warmdown steps. The report's "Device use" table
# gives the GPU's share outside training. About 19 minutes with the set-up: fits one machine's 30-minute hold. Run in
# consecutive calls until it prints "done: 0".
TAG=c51 N=h100_overhead180 PER_GPU=2 CPUS=8 TRIALS=6 BUDGET_S=180 GRACE_S=120 WARMDOWN=750
source benchmarks/search24_one_gpu.sh
