#!/usr/bin/env bash
# Fourteenth session (call 85), one NVIDIA H200 (`nvidia-h200`; the first H200 call since the third session): the 3-seed
# rerun's candidate (9 x 512, MLP x3, blocks 5-6 run twice, int6 with a float16 embedding) and the baseline shape
# (9 x 512, MLP x2, int8) at 180 s, seed 1338, one after the other on one GPU: whether the lead and the
# step times measured on the H100 carry over to the H200. The configs are the run configs the rerun wrote for
# seed 1338 on the H100 (benchmarks/results/call84), unchanged.
# Carry .whl .searchpack (no Ray: the trainer runs alone); run until it prints "done: 0" (~9-10 minutes).
source benchmarks/detached.sh
job() {
  for name in candidate baseline; do
    timeout 300 python3 -m trainer train --config benchmarks/configs/h200_side_by_side/${name}_seed1338.yaml \
      --data $DATA --tokenizer $TOK --out /tmp/h200/$name > /tmp/h200/$name.log 2>&1
    echo "$name rc=$?"
  done
}
detached h200
for name in candidate baseline; do
  grep -E "training done|val_bpb" /tmp/h200/$name.log | tail -3
  cp /tmp/h200/$name.log $OUT/ 2>/dev/null; cp /tmp/h200/$name/metrics.json $OUT/$name.metrics.json 2>/dev/null
done
cp /tmp/h200/job.log $OUT/ 2>/dev/null; true
