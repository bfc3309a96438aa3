#!/usr/bin/env bash
# Ablation: what each technique of the record's recipe buys. The base config, then one run per technique with that
# technique removed (the --set overrides below), each for the same wall-clock budget on one GPU, one seed; a table of
# val_bpb (raw weights, after averaging, after the round trip), artifact bytes and ms/step, each beside the base's.
# An ablation of export settings only (gptq, brotli) re-exports the base's trained weights (`trainer export`) once the
# base has finished: training never reads them, so it is the same as training again, without the seed noise or the
# GPU time.
#
# Usage: DATA=<shard folder> TOKENIZER=<SentencePiece .model> OUT=<results folder> bash benchmarks/ablation.sh
#
# Optional settings (environment variables):
#   CONFIG     the base run config (default benchmarks/configs/record_180s_1gpu.yaml: the record for 180 s on one GPU)
#   BUDGET_S   training seconds of every run (default 180; overrides the config's train.budget_s)
#   SEED       the seed of every run (default 1337)
#   ONLY       names of the ablations to run, space-separated (default all; "base" is always run first)
#   SETS       more --set overrides for every run, space-separated (e.g. "train.eval_stride=0": no sliding score)
#   PARALLEL   runs at once on the GPU (default 1). With 2, each run starts up and compiles while another trains,
#              then trains and evaluates alone (`trainer train --share-device`) and hands the GPU on while its
#              artifact compresses: about twice the runs per GPU-hour, each still training its budget alone; a
#              re-export takes its turn the same way (`trainer export --share-device`)
#   SMOKE=1    every run on the CPU with `trainer train --smoke` (checks the overrides, not the figures)
#
# Ablations (name: what is removed, as --set overrides):
#   xsa: model.xsa_last=0                      bigram: model.bigram_buckets=0
#   value_embed: model.value_embed_dim=0 model.value_embed_layers=[]
#   partial_rope: model.rope_dims=0            ln_scale: model.ln_scale=false
#   parallel: model.parallel_from_block=-1     attention_all: model.attention_off_blocks=[]
#   skip_gates: model.skip_gates=false         smear: model.smear=false
#   orthogonal_init: model.weight_init=normal  leaky_relu2: model.activation=relu2
#   untied_mlps: model.untie_mlp=none          recurrence: model.virtual_layers=[0,...,10] model.untie_mlp=none
#   delayed_recurrence: train.recurrence_start_fraction=0
#   ema: train.average=none                    weight_decay: train.muon_weight_decay=0 train.adam_weight_decay=0
#   late_qat: train.late_qat_lr_scale=0        shuffled: train.data_order=stream
#   gptq: export.gptq=false                    brotli: export.compressor=zstd export.byte_shuffle=false
# Writes to $OUT/ablation_<gpu>_<date>/: one run folder per name (metrics.json, train.log; the base's also holds its
# float weights, weights.pt), NAME.ptz/NAME.json per re-export, and ablation.md. Run again the same day (another day:
# with RESULT_DATE), it keeps the runs and re-exports that finished and does the rest. Exit 1 if a run failed, 2 on
# bad settings.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
bench_init ablation "$@"

CONFIG=${CONFIG:-benchmarks/configs/record_180s_1gpu.yaml}
BUDGET_S=${BUDGET_S:-180}
SEED=${SEED:-1337}
[ -f "$CONFIG" ] || bench_fail "CONFIG=$CONFIG is not a file: name a run config (default benchmarks/configs/record_180s_1gpu.yaml)"
require_seconds BUDGET_S
require_int SEED seed
PARALLEL=${PARALLEL:-1}
[[ $PARALLEL =~ ^[1-9][0-9]*$ ]] || bench_fail "PARALLEL=$PARALLEL is not a positive whole number of runs at once"

declare -A REMOVE=(
  [xsa]="model.xsa_last=0"
  [bigram]="model.bigram_buckets=0"
  [value_embed]="model.value_embed_dim=0 model.value_embed_layers=[]"
  [partial_rope]="model.rope_dims=0"
  [ln_scale]="model.ln_scale=false"
  [parallel]="model.parallel_from_block=-1"
  [attention_all]="model.attention_off_blocks=[]"
  [skip_gates]="model.skip_gates=false"
  [smear]="model.smear=false"
  [orthogonal_init]="model.weight_init=normal"
  [leaky_relu2]="model.activation=relu2"
  [untied_mlps]="model.untie_mlp=none"
  [recurrence]="model.virtual_layers=[0,1,2,3,4,5,6,7,8,9,10] model.untie_mlp=none"
  [delayed_recurrence]="train.recurrence_start_fraction=0"
  [ema]="train.average=none"
  [weight_decay]="train.muon_weight_decay=0 train.adam_weight_decay=0"
  [late_qat]="train.late_qat_lr_scale=0"
  [shuffled]="train.data_order=stream"
  [gptq]="export.gptq=false"
  [brotli]="export.compressor=zstd export.byte_shuffle=false"
)
ORDER="xsa bigram value_embed partial_rope ln_scale parallel attention_all skip_gates smear orthogonal_init leaky_relu2
untied_mlps recurrence delayed_recurrence ema weight_decay late_qat shuffled gptq brotli"
NAMES=${ONLY:-$ORDER}
for name in $NAMES; do
  [ -n "${REMOVE[$name]:-}" ] || bench_fail "ONLY has '$name': use names from --help (e.g. ONLY=\"xsa bigram\")"
done

bench_start

base=(--config "$CONFIG" --set "train.budget_s=$BUDGET_S" --set "train.seed=$SEED")
set_args "${SETS:-}" base
device=()
[ "${SMOKE:-0}" = 1 ] && { base+=(--smoke); device=(--device cpu); }
base+=("${device[@]}")

failed=0
run_one() {  # name, then its overrides (after them, more trainer arguments)
  local name=$1 sets=$2 args=("${base[@]}")
  if [ -f "$RESULT/$name/metrics.json" ]; then progress "$name: finished earlier, kept"; return; fi
  set_args "$sets" args
  progress "$name: ${sets:-the base config}"
  rm -rf "${RESULT:?}/$name"
  SHOW="^.{0,14}val_bpb .*round trip" bench_train "$name" "$RESULT/$name" "$RESULT/$name.log" "${args[@]}" "${@:3}"
}

export_only() {  # true when every override of $1 is an export setting
  local item
  for item in $1; do [[ $item == export.* ]] || return 1; done
}

reexport_one() {  # name, then its overrides (after them, more `trainer export` arguments): the base's weights
  local name=$1 args=()  # exported with them, once the base (trained beside it with PARALLEL > 1) has finished
  if [ -f "$RESULT/$name.json" ]; then progress "$name: re-exported earlier, kept"; return; fi
  while [ ! -f "$RESULT/base/metrics.json" ] && kill -0 "$base_pid" 2>/dev/null; do sleep 5; done
  if [ ! -f "$RESULT/base/weights.pt" ]; then
    echo "$SCRIPT: $name needs the base's weights.pt; remove $RESULT/base to train it again" >&2; return
  fi
  set_args "$2" args
  progress "$name: the base's weights exported with $2"
  if python -m trainer export "$RESULT/base" "${args[@]}" "${@:3}" --data "$DATA" --tokenizer "$TOKENIZER" \
      "${device[@]}" --out "$RESULT/$name.ptz" > "$RESULT/$name.log" 2>&1; then
    progress "$name: $(grep "val_bpb" "$RESULT/$name.log" | tail -n 1)"
  else
    echo "$SCRIPT: $name failed: $(tail -n 1 "$RESULT/$name.log") (log: $RESULT/$name.log)" >&2
  fi
}

start_one() {  # run_one or reexport_one and its arguments; with PARALLEL > 1 in the background, taking turns on
  local what=$1  # the GPU (--share-device), once fewer than PARALLEL are going
  shift
  if [ "$PARALLEL" = 1 ]; then "$what" "$@"; return; fi
  while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n; done
  "$what" "$@" --share-device &
}

base_pid=""  # the base's process while it trains in the background (PARALLEL > 1)
start_one run_one base "" --save-weights
[ "$PARALLEL" = 1 ] || base_pid=$!
rows=(--base "$RESULT/base")
results=("$RESULT/base/metrics.json")
for name in $NAMES; do
  if export_only "${REMOVE[$name]}"; then
    start_one reexport_one "$name" "${REMOVE[$name]}"
    rows+=(--run "$name" "${REMOVE[$name]}" "$RESULT/$name.json")
    results+=("$RESULT/$name.json")
  else
    start_one run_one "$name" "${REMOVE[$name]}"
    rows+=(--run "$name" "${REMOVE[$name]}" "$RESULT/$name")
    results+=("$RESULT/$name/metrics.json")
  fi
done
wait
for result in "${results[@]}"; do  # a background run's failure is known by its missing result
  [ -f "$result" ] || failed=1
done

python benchmarks/tables.py ablation "${rows[@]}" > "$RESULT/ablation.md"
[ "$PARALLEL" = 1 ] || printf '\n%s\n' "Runs took turns on the GPU ($PARALLEL at once, \`trainer train --share-device\`):\
 each trained alone, while another started up, compiled or compressed its artifact beside it." >> "$RESULT/ablation.md"
cat "$RESULT/ablation.md"
progress "done: $RESULT/ablation.md"
exit $failed
