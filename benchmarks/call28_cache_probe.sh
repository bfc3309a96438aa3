export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled DATA=/tmp/sp/data TOK=/tmp/sp/fineweb_1024_bpe.model
python3 - > $OUT/startup_probe.txt 2>&1 <<'PY'
import time; t0=time.perf_counter(); T=[]
def lap(n):
    global t0; t=time.perf_counter(); T.append((n, round(t-t0,2))); t0=t
import torch; lap("import torch")
from trainer.runtime import setup_runtime; from trainer.run_config import load; lap("import trainer")
rt=setup_runtime(None); lap("runtime")
torch.zeros(1,device="cuda"); torch.cuda.synchronize(); lap("cuda first op")
from trainer.bpb import byte_table, load_sentencepiece; sp=load_sentencepiece("/tmp/sp/fineweb_1024_bpe.model"); tb=byte_table(sp,1024); lap("tokenizer")
from trainer.data.shards import load_val_tokens, TokenStream; v=load_val_tokens("/tmp/sp/data",1024,None); lap("val tokens")
cfg=load("benchmarks/configs/loop45_untied_int6.yaml")
from trainer.model import GPT; m=GPT(cfg.model,"auto",torch.bfloat16,torch.bfloat16); lap("model build")
m=m.to(rt.device); torch.cuda.synchronize(); lap("model to cuda")
from trainer.optim import build_optimizers; o=build_optimizers(m,cfg.train); lap("optimizers")
c=torch.compile(m,dynamic=False); lap("torch.compile wrap")
s=TokenStream("/tmp/sp/data",1024); lap("token stream")
print(T)
PY
cat $OUT/startup_probe.txt
timeout -k 20 200 python3 -m search run --space spaces/default.yaml --name cacheprobe --trials 1 --budget-s 20 --ray-address local --gpus-per-trial 1 --cpus-per-trial 8 --enqueue benchmarks/configs/loop45_untied_int6.yaml --data $DATA --tokenizer $TOK --storage /tmp/searches --set train.batch_tokens=131072 --set train.warmdown_steps=100 > $OUT/search.log 2>&1
echo rc=$?; tail -3 $OUT/search.log
L=$(find /tmp/searches/cacheprobe -name train.log | head -1); head -4 $L | cut -c1-160; tail -3 $L; cp $L $OUT/probe_train.log
