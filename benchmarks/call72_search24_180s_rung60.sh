#!/usr/bin/env bash
# Device calls 72+ (eleventh session, one H100): the 24-trial search at 180 s over the default space (the
# embedding's width searched), now with the default first ASHA rung, budget/rf = 60 s (rf 3). Call 63's 20 s rung
# ranked at Spearman -0.20 and pruned every config deeper than 9 layers; this run measures the 60 s rung's
# fidelity (item 4) and the non-training share when a rung can hide the next trial's compile (item 2). Two trials
# per GPU, presets first, as call 63. The driver gets SIGINT after 25 minutes so the machine (held at most 30)
# still reports; `search resume` finishes it on the next machine. Run in consecutive calls until "done: 0".
TAG=c72 N=h100_search24_180s_r60 PER_GPU=2 CPUS=8 TRIALS=24 BUDGET_S=180 GRACE_S=60 WARMDOWN=750 LIMIT_S=1500
source benchmarks/search24_one_gpu.sh
