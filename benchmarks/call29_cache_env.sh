export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 DATA=/tmp/sp/data TOK=/tmp/sp/fineweb_1024_bpe.model
run() { name=$1; shift; env "$@" timeout 150 python3 -m trainer train --config benchmarks/configs/loop45_untied_int6.yaml --data $DATA --tokenizer $TOK --out /tmp/c29/$name --set train.budget_s=5 --set export.zstd_level=1 --set train.final_val_tokens=262144 > $OUT/$name.log 2>&1; echo "$name rc=$? compile_s=$(python3 -c "import json;print(round(json.load(open('/tmp/c29/$name/metrics.json'))['compile_s'],1))")"; }
run plain A=1
run omp8 OMP_NUM_THREADS=8
run cvd CUDA_VISIBLE_DEVICES=0
env | grep -i "torchinductor\|triton\|TMPDIR" ; ls /tmp | head -30; du -sh /tmp/torchinductor_* 2>/dev/null
