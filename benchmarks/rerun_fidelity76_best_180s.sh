#!/usr/bin/env bash
# Run in call 84 (thirteenth session, one H100; issue #6 item 3; results in benchmarks/results/call84):
# three seeds at 180 s of the fidelity
# study's best (benchmarks/configs/fidelity76_best.yaml: 1.1092 at one seed, the best single 180 s run so far)
# at --widest-bits, against call 58's three baseline runs at int8 (same config; training does not read the
# export, so they are kept). About 14 minutes on one H100: two calls.
# Prepare on this machine:
#   tar -xzf benchmarks/results/call58/c58_files.tgz -C /tmp tmp/searches/loop45_180s_widest/rerun/baseline
#   mkdir -p .searchstate/fidelity76_best_180s/rerun && cp -r /tmp/tmp/searches/loop45_180s_widest/rerun/baseline \
#     .searchstate/fidelity76_best_180s/rerun/
# Carry .whl in a first call, then .raypack .searchpack .searchstate/fidelity76_best_180s; run until "done: 0".
S=/tmp/searches; N=fidelity76_best_180s
job() {
  mkdir -p $S && cp -r .searchstate/$N $S/
  python3 -m search rerun $N --config benchmarks/configs/fidelity76_best.yaml --widest-bits --gpus 1 --parallel 1 \
    --budget-s 180 --seeds 3 --seed-base 1338 --set train.batch_tokens=131072 --set train.warmdown_steps=750 \
    --data $DATA --tokenizer $TOK --storage $S > /tmp/r76/rerun.log 2>&1
}
source benchmarks/detached.sh
export S N
detached r76
rerun_outputs r76
