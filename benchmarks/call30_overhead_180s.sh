#!/usr/bin/env bash
# Device calls 30-31 (a fresh H100, fifth session): issue #6 item 2, the non-training share of 180 s trials inside
# a search, with reused workers (reuse_actors), reports at ASHA's rungs only, level-1 export and the pinned thread
# count. Search A: the baseline shape and the int6 loop (calls 26-27's candidate), both compiling cold on a fresh
# machine. Search B, same machine: the same two plus the loop at int5 (same shape), now warm. Then a plain trainer
# run of the loop's shape, outside Ray, checks that it finds the search's compiled graphs. The job (~16 min)
# outlasts one call: the first call starts it detached and both wait for it and copy what it wrote.
S=/tmp/searches
job() {
  common=(--space spaces/default.yaml --budget-s 180 --reduction-factor 3 --seed 0 --ray-address local
          --gpus-per-trial 1 --cpus-per-trial 8 --data $DATA --tokenizer $TOK --storage $S
          --set train.batch_tokens=131072 --set train.warmdown_steps=500 --set train.rung_roundtrip=true
          --set export.zstd_level=1)
  python3 -m search run --name h100_180s_a --trials 2 "${common[@]}" --enqueue spaces/presets/baseline.yaml \
    --enqueue benchmarks/configs/loop45_untied_int6.yaml > /tmp/c30/search_a.log 2>&1
  python3 -m search run --name h100_180s_b --trials 3 "${common[@]}" --enqueue spaces/presets/baseline.yaml \
    --enqueue benchmarks/configs/loop45_untied_int6.yaml --enqueue spaces/presets/loop45_untied_mlp.yaml \
    > /tmp/c30/search_b.log 2>&1
  python3 -m trainer train --config benchmarks/configs/loop45_untied_int6.yaml --data $DATA --tokenizer $TOK \
    --out /tmp/c30/plain --set train.budget_s=5 --set export.zstd_level=1 --set train.final_val_tokens=262144 \
    > /tmp/c30/plain.log 2>&1
  for n in h100_180s_a h100_180s_b; do python3 -m search report $n --storage $S --format md > /tmp/c30/report_$n.md 2>&1; done
}
source benchmarks/detached.sh
export S
detached c30
tail -n 3 /tmp/c30/search_*.log; grep -h "startup\|step 1 \|training done" /tmp/c30/plain/train.log 2>/dev/null
grep -h "^- time\|non-training" /tmp/c30/report_*.md 2>/dev/null
tar -czf $OUT/c30_files.tgz -C / tmp/c30 $(cd / && find tmp/searches -name "train.log" -o -name "metrics.json" -o -name "report.md" -o -name "summary.json" -o -name "frontier.png" -o -name "study.db" | grep -v checkpoint) 2>/dev/null
