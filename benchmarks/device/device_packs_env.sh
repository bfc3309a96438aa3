# Sourced by the device calls that carry the packs of make_device_packs.sh (.whl, .raypack, .searchpack):
# installs zstandard, Ray/Optuna and their wheels into /tmp/site, unpacks the data, points DATA/TOK at it.
# A call that runs the trainer alone (no search) may leave .raypack behind: Ray is then not installed.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
if [ -d .raypack ]; then bash .raypack/install.sh || exit 1; fi
python3 -c "
import tarfile, zstandard
with open('.searchpack/data.tar.zst', 'rb') as fh, zstandard.ZstdDecompressor().stream_reader(fh) as zr:
    tarfile.open(fileobj=zr, mode='r|').extractall('/tmp/sp')
" || exit 1
export DATA=/tmp/sp/data TOK=/tmp/sp/fineweb_1024_bpe.model TOKENIZER=/tmp/sp/fineweb_1024_bpe.model
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
