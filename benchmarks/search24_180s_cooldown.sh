#!/usr/bin/env bash
# Not run (planned for the twelfth session, which ran the fidelity study instead; a later session, one H100): call 72's search (24 trials at 180 s, one ASHA rung at 60 s, two
# trials per GPU, presets first) with each rung scored after a cooldown of 10% of the steps trained so far
# (train.rung_cooldown_fraction, added after calls 63 and 72 found the 60 s rung ranking at Spearman +0.19, n = 10).
# The report ranks both the cooled-down rung (what ASHA used) and the score before the cooldown against the
# finals, over the same trials. No trial starts after 20 minutes (--drain-after-s) and the driver stops itself at
# 25 (--stop-after-s) if one is still running; `search resume` (or
# `resume --from-study` on another machine) finishes it. Run in consecutive calls until it prints "done: 0".
TAG=c77 N=h100_search24_180s_cool10 PER_GPU=2 CPUS=8 TRIALS=24 BUDGET_S=180 GRACE_S=60 WARMDOWN=750 LIMIT_S=0
EXTRA_ARGS="--set train.rung_cooldown_fraction=0.1 --drain-after-s 1200 --stop-after-s 1500"
source benchmarks/search24_one_gpu.sh
