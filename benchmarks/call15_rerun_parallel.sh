#!/usr/bin/env bash
# Device call 15 (nvidia-h200-x2, right after call 14 on the same warm machine): issue #6 item 3's rerun.
# The call-14 search's best finished trial against the baseline shape (spaces/presets/baseline.yaml), 3 seeds
# each, 120 training seconds per run (the search's trials had 45), compiled, one GPU per run and two runs at a
# time (`--gpus 1 --parallel 2`: each seed's candidate and baseline train side by side on the two GPUs).
# Both configs get the same train settings (131,072-token steps as in the search, warmdown 500 steps).
S=/tmp/searches; N=h200x2_default
[ -d /tmp/site/ray ] && [ -d /tmp/sp/data ] && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 \
  RAY_AUTH_MODE=disabled DATA=/tmp/sp/data TOK=/tmp/sp/fineweb_1024_bpe.model \
  || source benchmarks/device_packs_env.sh > $OUT/setup.log 2>&1
if [ ! -f $S/$N/study.db ]; then  # a fresh machine: the search's study travels in call 14's archive
  mkdir -p $S && tar -xzf benchmarks/results/call14/search_files.tgz -C $S || exit 1
  python3 - <<PY
import json, pathlib
p = pathlib.Path("$S/$N/search.json"); d = json.loads(p.read_text())
d.update(storage="$S", data_dir="$DATA", tokenizer="$TOK"); p.write_text(json.dumps(d, indent=2))
PY
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 560 python3 -m search rerun $N --best --storage $S --gpus 1 --parallel 2 --budget-s 120 --seeds 3 \
  --set train.compile=true --set train.compile_warmup_steps=5 --set train.warmdown_steps=500 \
  --out /tmp/rerun15 > $OUT/rerun.log 2>&1
echo "rerun rc=$?"; grep "^\[rerun\]" $OUT/rerun.log | tail -12
cp /tmp/rerun15/rerun.md /tmp/rerun15/rerun.json $OUT/ 2>/dev/null; head -40 $OUT/rerun.md
tar -czf $OUT/rerun_logs.tgz --exclude='*.ptz' --exclude='*.pt' -C /tmp rerun15 2>/dev/null; ls -la $OUT
