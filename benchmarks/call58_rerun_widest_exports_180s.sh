#!/usr/bin/env bash
# Device calls 58+ (issue #6 item 3): call 54's fair comparison, cheaper, plus what other exports would give.
# 1. `search rerun --widest-bits` at 180 s: the baseline exports at int8 (its widest that fits), the loop at int6 (its
#    widest). The loop's seeds 1338-1339 of calls 56-57 are kept (same config and trainer code; the rerun checks the
#    config), so this trains the loop's seed 1340 and the baseline's seeds 1338-1340: four runs, ~18 minutes.
#    Prepare the kept runs first, on this machine:
#      mkdir -p .searchstate/loop45_180s_widest/rerun && tar -xzf benchmarks/results/call53/c53_files.tgz -C /tmp \
#        tmp/searches/loop45_180s/rerun/candidate && cp -r /tmp/tmp/searches/loop45_180s/rerun/candidate \
#        .searchstate/loop45_180s_widest/rerun/
# 2. `trainer export` on the new runs' saved float weights: the same weights under other export settings (training
#    never reads them), so each row below is exactly what training with that export would have given.
# Carry .whl .raypack .searchpack .searchstate/loop45_180s_widest; run in consecutive calls until "done: 0".
S=/tmp/searches; N=loop45_180s_widest
job() {
  mkdir -p $S && cp -r .searchstate/$N $S/
  python3 -m search rerun $N --config spaces/presets/loop45_11x512.yaml --widest-bits --gpus 1 --parallel 1 \
    --budget-s 180 --seeds 3 --seed-base 1338 --set train.batch_tokens=131072 --set train.warmdown_steps=750 \
    --data $DATA --tokenizer $TOK --storage $S > /tmp/c58/rerun.log 2>&1 || return $?
  local runs=$S/$N/rerun
  exports() {  # RUN_DIR then one export setting list per argument ("" = as trained)
    local run=$1; shift
    for sets in "$@"; do
      python3 -m trainer export $run --data $DATA --tokenizer $TOK $(for s in $sets; do echo --set $s; done) \
        >> /tmp/c58/exports.log 2>&1
    done
  }
  exports $runs/candidate/seed1340 "" "export.embedding_bits=8" "export.embedding_bits=16" "export.quant_bits=8"
  for seed in 1338 1339 1340; do
    exports $runs/baseline/seed$seed "export.quant_bits=6" "export.quant_bits=6 export.embedding_bits=16"
  done
  exports $runs/baseline/seed1338 "" "export.embedding_bits=16"
}
source benchmarks/detached.sh
export S N
detached c58
rerun_outputs c58
cat /tmp/c58/exports.log 2>/dev/null
tar -czf $OUT/c58_exports.tgz -C / $(cd / && find tmp/searches -path "*exports/*.json") 2>/dev/null
