#!/usr/bin/env bash
# Device calls 63-66 (tenth session, one H100): the 24-trial search at the rerun's budget (180 s) that issue #6
# items 2-4 ask for, over the default space, which now searches the embedding's export width too
# (embedding_bits: [0, 8, 16]; every earlier int5/int6 trial paid the embedding's rounding, call 58). Two trials per
# GPU, ASHA rungs at 20 and 60 s (rf 3), presets first. The driver gets SIGINT after 25 minutes so the machine
# (held at most 30) still reports. Run in consecutive calls until it prints "done: 0".
TAG=c63 N=h100_search24_180s PER_GPU=2 CPUS=8 TRIALS=24 BUDGET_S=180 GRACE_S=20 WARMDOWN=750 LIMIT_S=1500
source benchmarks/search24_one_gpu.sh
