#!/usr/bin/env bash
# Device calls 56-57 (one H100, eighth session; issue #6 item 3). The searches of calls 51-55 ran the presets for
# 180 s (seed 1337), and loop45_11x512 beat the baseline shape both times (1.1243 vs 1.1439, 1.1233 vs 1.1389).
# This reruns both with seeds 1338-1339 and the searches' train settings (131,072-token steps, 750 warmdown
# steps), so that with seed 1337 from calls 53-55 each config has three seeds. The session's device time left
# held four runs, not six. Run in consecutive calls until it prints "done: 0".
S=/tmp/searches; N=loop45_180s
job() {
  python3 -m search rerun $N --config spaces/presets/loop45_11x512.yaml --gpus 1 --parallel 1 --budget-s 180 \
    --seeds 2 --seed-base 1338 --set train.batch_tokens=131072 --set train.warmdown_steps=750 \
    --data $DATA --tokenizer $TOK --storage $S > /tmp/c53/rerun.log 2>&1
}
source benchmarks/detached.sh
export S N
detached c53
rerun_outputs c53
