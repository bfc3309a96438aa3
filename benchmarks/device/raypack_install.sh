#!/usr/bin/env bash
# Offline install of ray 2.60.0 (stripped) + optuna 5.0.0 and deps into /tmp/site.
# Run from the repository root (the directory containing .raypack/):
#     bash .raypack/install.sh
# Precondition: zstandard is already importable from /tmp/site (installed by a separate step).
# Afterwards use: export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
set -euo pipefail

SITE="${RAYPACK_SITE:-/tmp/site}"
PACK=".raypack"

[ -d "$PACK/wheels" ] || { echo "install.sh: $PACK/wheels not found (run from the repo root)" >&2; exit 1; }
[ -f "$PACK/ray.tar.zst" ] || { echo "install.sh: $PACK/ray.tar.zst not found" >&2; exit 1; }
mkdir -p "$SITE"

# 1) small wheels (pure python + cp312 manylinux x86_64)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$PACK"/wheels/*.whl

# 2) ray tree (ray/ + ray-2.60.0.dist-info) from the zstd tarball
rm -rf "$SITE/ray" "$SITE"/ray-*.dist-info
PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" python3 - "$PACK/ray.tar.zst" "$SITE" <<'PY'
import sys, tarfile, zstandard
src, dest = sys.argv[1], sys.argv[2]
with open(src, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as zr:
    with tarfile.open(fileobj=zr, mode="r|") as tar:
        if hasattr(tarfile, "tar_filter"):
            tar.extractall(dest, filter="tar")
        else:
            tar.extractall(dest)
PY

# 3) sanity checks
for f in ray/_raylet.so ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server; do
    [ -s "$SITE/$f" ] || { echo "install.sh: missing $SITE/$f" >&2; exit 1; }
done
[ -x "$SITE/ray/core/src/ray/raylet/raylet" ] && [ -x "$SITE/ray/core/src/ray/gcs/gcs_server" ] \
    || { echo "install.sh: ray binaries not executable" >&2; exit 1; }
echo "install.sh: installed into $SITE"
