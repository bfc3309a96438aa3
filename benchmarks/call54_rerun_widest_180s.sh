#!/usr/bin/env bash
# Next device calls (not yet run; issue #6 item 3): calls 56-57's comparison made fair in its export. There the
# baseline preset exported at int6 and lost 0.029 val_bpb to the round trip (the loop 0.016), though the size model
# predicts the baseline to fit at int8 (15,540,712 bytes). With --widest-bits both configs export at the most bits
# predicted to fit: int8 for the baseline, int6 for the loop. Three seeds each at 180 s, ~24 minutes on one H100:
# near one machine's 30-minute hold. If the machine goes back mid-rerun, copy the finished runs (metrics.json,
# train.log, model.ptz) of /tmp/searches/$N into .searchstate/$N, carry it, and run again: the rerun keeps them.
# Run in consecutive calls until it prints "done: 0".
S=/tmp/searches; N=loop45_180s_widest
job() {
  [ -d .searchstate/$N ] && mkdir -p $S && cp -r .searchstate/$N $S/
  python3 -m search rerun $N --config spaces/presets/loop45_11x512.yaml --widest-bits --gpus 1 --parallel 1 \
    --budget-s 180 --seeds 3 --set train.batch_tokens=131072 --set train.warmdown_steps=750 \
    --data $DATA --tokenizer $TOK --storage $S > /tmp/c54/rerun.log 2>&1
}
source benchmarks/detached.sh
export S N
detached c54
rerun_outputs c54
