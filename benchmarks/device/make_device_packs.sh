#!/usr/bin/env bash
# Build the ignored folders device calls carry to the GPU machine (no network there, 64 MiB per call):
#   .whl/        the zstandard and brotli wheels (the machine's image lacks them; it has the rest the trainer needs);
#   .raypack/    ray 2.60.0 for CPython 3.12 without jars, rllib, serve, llm, the dashboard web client and
#                *.map files, binaries stripped, as one zstd-19 tar (28 MB), plus the wheels ray.tune, optuna
#                and sqlalchemy need that the machine lacks (jsonschema, pydantic, ...), and install.sh;
#   .searchpack/ val + all four train shards + tokenizer as one zstd-19 tar (82 MB of tokens -> 22 MB;
#                benchmarks/device/make_data_pack.py, which also runs alone);
#   .flashpack/  with FLASH=1 only: flash-attn-4 and the CuTe DSL wheels it needs for CUDA 13, in part1/ and
#                part2/ (the 92 MB runtime wheel is cut in two, each part under 64 MiB: carry part1 in one call,
#                part2 in the next on the same warm machine, then `bash .flashpack/part2/install.sh`).
# Run from the repository root on an x86-64 Linux machine with network access; SHARED_DATA names the folder
# holding textmix_sp1024/ and tokenizers/ (default ../shared/data).
set -euo pipefail
W=$(mktemp -d); S=$W/stage
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "${@:2}"; }
get $W ray==2.60.0
mkdir -p .whl .raypack/wheels .searchpack $S
get .whl zstandard==0.25.0 brotli==1.2.1
get .raypack/wheels optuna==5.0.0 alembic==1.20.1 mako==1.4.3 colorlog==6.12.0 \
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==0.30.0 \
  pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
# SQLAlchemy's pure-Python wheel: 2.6 MB smaller than the compiled one, which keeps all three packs in one call.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py --platform any \
  -d .raypack/wheels sqlalchemy==2.1.9
python3 -m zipfile -e $W/ray-2.60.0-*.whl $S
rm -rf $S/ray/jars $S/ray/rllib $S/ray/serve $S/ray/llm $S/ray/dashboard/client
find $S/ray/dashboard -name '*.map' -delete
strip --strip-unneeded $S/ray/_raylet.so $S/ray/core/src/ray/raylet/raylet $S/ray/core/src/ray/gcs/gcs_server
chmod +x $S/ray/core/src/ray/raylet/raylet $S/ray/core/src/ray/gcs/gcs_server
cp benchmarks/device/raypack_install.sh .raypack/install.sh
python3 - "$S" <<'PY'
import os, sys, tarfile, zstandard
stage = sys.argv[1]
with open(".raypack/ray.tar.zst", "wb") as fh, zstandard.ZstdCompressor(level=19, threads=-1).stream_writer(fh) as zw:
    with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in ("ray", "ray-2.60.0.dist-info"):
            tar.add(os.path.join(stage, name), arcname=name)
PY
python3 benchmarks/device/make_data_pack.py "${SHARED_DATA:-../shared/data}"
if [ "${FLASH:-0}" = 1 ]; then
  rm -rf .flashpack; mkdir -p .flashpack/part1 .flashpack/part2 $W/flash
  get .flashpack/part1 flash-attn-4==4.0.0b40 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
    nvidia-cutlass-dsl-libs-core==4.8.1 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5 quack-kernels==0.6.5
  get $W/flash nvidia-cutlass-dsl-libs-cu13==4.8.1
  split -b 48M $W/flash/*.whl $W/flash/cu13.
  mv $W/flash/cu13.aa .flashpack/part1/; mv $W/flash/cu13.ab .flashpack/part2/
  (cd $W/flash && ls *.whl) > .flashpack/part2/wheel_name.txt
  cp benchmarks/device/flashpack_install.sh .flashpack/part2/install.sh
fi
du -sh .whl .raypack .searchpack .flashpack 2>/dev/null; rm -rf $W
