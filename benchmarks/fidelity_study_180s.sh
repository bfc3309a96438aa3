#!/usr/bin/env bash
# Device calls 76+ (twelfth session, one H100): a rung-fidelity study at 180 s (issue #6 item 4). Call 72's search
# (the default space, presets first, two trials per GPU) with `--early-stopping none`: no trial is stopped, so
# every trial's scores at 60 s and 120 s (--report-every-s 60) rank against its own final, not only the few that
# an ASHA rung let through (calls 63 and 72: n = 10 pooled, Spearman +0.19). Each report is scored after a
# cooldown of 10% of the steps so far (train.rung_cooldown_fraction) and before it, so the report ranks both.
# No trial starts after 1,050 s (two trials per GPU: the last ones end by ~1,500 s); the stop at 1,500 s is the
# backstop before the machine goes back. `bash benchmarks/fidelity_study_180s_resume.sh` goes on on the next
# machine. Carry .whl in a first call, then .raypack .searchpack; run until it prints "done: 0".
TAG=c76 N=h100_fidelity_180s_cool10 PER_GPU=2 CPUS=8 TRIALS=24 BUDGET_S=180 GRACE_S=60 WARMDOWN=750 LIMIT_S=0
EXTRA_ARGS="--early-stopping none --report-every-s 60 --set train.rung_cooldown_fraction=0.1 --drain-after-s 1050 --stop-after-s 1500"
source benchmarks/search24_one_gpu.sh
