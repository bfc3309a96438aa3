#!/usr/bin/env bash
# Device call 35 (a fresh H100): the full cache-key details of a Tune trial and a pinned plain process (call 34:
# the pinned process still missed the trial's graphs), diffed afterwards on the CPU.
source benchmarks/device_packs_env.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
for mode in tune pinned; do python3 benchmarks/cache_key_probe.py $mode /tmp/key_$mode.json 2>&1 | grep "^$mode "; done
tar -czf $OUT/keys.tgz -C /tmp key_tune.json key_pinned.json
