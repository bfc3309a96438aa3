#!/usr/bin/env bash
# Device calls 32-33 (a fresh H100, fifth session): issue #6 item 2, one complete 180 s trial in a reused worker
# with a warm compile cache. Search C enqueues the int5 loop preset, then the same shape at int6: the first trial
# compiles cold in a fresh worker, the second reuses that worker and its compiled graphs, and (better at every
# rung) is not pruned. Then benchmarks/cache_key_probe.py diffs Inductor's cache keys of a plain process and a
# Tune trial (calls 28-31: torchrun/plain runs and Ray trials never share compiled graphs on the GPU).
S=/tmp/searches
job() {
  python3 -m search run --name h100_180s_c --trials 2 --space spaces/default.yaml --budget-s 180 \
    --reduction-factor 3 --seed 0 --ray-address local --gpus-per-trial 1 --cpus-per-trial 8 --data $DATA \
    --tokenizer $TOK --storage $S --set train.batch_tokens=131072 --set train.warmdown_steps=500 \
    --set train.rung_roundtrip=true --set export.zstd_level=1 --enqueue spaces/presets/loop45_untied_mlp.yaml \
    --enqueue benchmarks/configs/loop45_untied_int6.yaml > /tmp/c32/search_c.log 2>&1
  python3 -m search report h100_180s_c --storage $S --format md > /tmp/c32/report_c.md 2>&1
  python3 benchmarks/cache_key_probe.py plain /tmp/c32/key_plain.json > /tmp/c32/key.log 2>&1
  python3 benchmarks/cache_key_probe.py tune /tmp/c32/key_tune.json >> /tmp/c32/key.log 2>&1
  OMP_NUM_THREADS=8 python3 benchmarks/cache_key_probe.py plain /tmp/c32/key_plain8.json >> /tmp/c32/key.log 2>&1
}
source benchmarks/detached.sh
export S
detached c32
tail -n 4 /tmp/c32/search_c.log; cat /tmp/c32/key.log 2>/dev/null | grep -v Warning | tail -n 6
tar -czf $OUT/c32_files.tgz -C / tmp/c32 $(cd / && find tmp/searches -name "train.log" -o -name "metrics.json" -o -name "report.md" -o -name "summary.json" -o -name "frontier.png" -o -name "study.db" -o -name "result.json" | grep -v checkpoint) 2>/dev/null
