#!/usr/bin/env bash
# Device call 34 (a fresh H100): does pin_cpu_threads (then: OMP_NUM_THREADS and torch threads; since: threads only) let a plain process hit
# the graphs a Tune trial compiled? Order: the Tune trial writes; then the pinned process (expected: hit, only
# the trial's entry exists); then torch.set_num_threads(8) alone (call 30's pin; expected: miss).
source benchmarks/device_packs_env.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
for mode in tune pinned setonly; do python3 benchmarks/cache_key_probe.py $mode $OUT/key_$mode.json 2>&1 | grep "^$mode "; done
