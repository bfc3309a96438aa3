#!/usr/bin/env bash
# Device calls 48-50 (one H100, seventh session): the fifth session's winner (loop45 untied at int6, calls 26-27:
# 0.071 better than the baseline shape at 120 s on two train shards) against the baseline shape again, same
# command, on all four train shards. On two shards the baseline made 11 passes in 120 s and the loop, 30% slower
# per step, 7: is the win depth or less overfitting? Call 44's search on four shards ranked the baseline first at
# 60 s (its deep loops pruned at the 30 s rung), so its `rerun --best` would compare the baseline with itself.
# Run in consecutive calls until it prints "done: 0". Call 48 ran on a machine that went back at its 30-minute hold
# after seed 1337 of both configs; calls 49-50 carried those two finished runs in .searchstate/ (the rerun keeps a run
# whose metrics.json exists) and ran seeds 1338-1339 on a fresh machine. Its /tmp tag c47 is the name it ran under.
S=/tmp/searches; N=loop45_int6_full4
job() {
  [ -d .searchstate/$N ] && mkdir -p $S && cp -r .searchstate/$N $S/
  python3 -m search rerun $N --config benchmarks/configs/loop45_untied_int6.yaml --gpus 1 --parallel 1 \
    --budget-s 120 --seeds 3 --data $DATA --tokenizer $TOK --storage $S > /tmp/c47/rerun.log 2>&1
}
source benchmarks/detached.sh
export S N
detached c47
rerun_outputs c47
