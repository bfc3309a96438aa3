# Sourced at the start of every device-machine command: install carried wheels, point at carried data.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export DATA=.carry/data TOK=.carry/fineweb_1024_bpe.model TOKENIZER=.carry/fineweb_1024_bpe.model
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# train_run DIR LIMIT_S NAME [trainer args...]: one trainer run under a time limit, logged to DIR/NAME.log,
# its log, metrics and artifact copied under $OUT (runs/ and the top level) so they come back.
train_run() {
  local dir=$1 limit=$2 name=$3; shift 3
  mkdir -p "$dir" "$OUT/runs"
  timeout "$limit" python3 -m trainer train --data "$DATA" --tokenizer "$TOK" --out "$dir/$name" "$@" \
    > "$dir/$name.log" 2>&1
  echo "== $name rc=$?"; grep -E "training done|val_bpb|Error" "$dir/$name.log" | tail -4
  cp "$dir/$name.log" "$OUT/runs/"
  cp "$dir/$name/metrics.json" "$OUT/runs/$name.metrics.json" 2>/dev/null
  cp "$dir/$name/model.ptz" "$OUT/$name.ptz" 2>/dev/null
  return 0
}
