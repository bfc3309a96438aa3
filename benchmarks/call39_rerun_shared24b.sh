#!/usr/bin/env bash
# Device calls 42-43 (one H100, sixth session): the best of call 38's 24-trial search (trial 34) against the
# baseline shape, 3 seeds each at 120 s, one run at a time, as `search rerun --best` picks and builds them.
# Carries the search's search.json and study.db in .searchstate/ (the trials' folders stay on the old machine).
# Run in consecutive calls until it prints "done: 0".
S=/tmp/searches; N=h100_shared24b
job() {
  mkdir -p $S/$N && cp .searchstate/search.json .searchstate/study.db $S/$N/
  python3 -m search rerun $N --best --gpus 1 --parallel 1 --budget-s 120 --seeds 3 --storage $S \
    --data $DATA --tokenizer $TOK --set train.warmdown_steps=500 > /tmp/c39/rerun.log 2>&1
}
source benchmarks/detached.sh
export S N
detached c39
rerun_outputs c39
