#!/usr/bin/env bash
# Offline install of flash-attn-4 and its CuTe DSL wheels into /tmp/site, once both parts of .flashpack are here
# (part1 carried by an earlier call on the same machine and copied to /tmp/flashpack_part1, or carried together).
#     bash .flashpack/part2/install.sh
#     export PYTHONPATH=/tmp/site:$(cat /tmp/site/pythonpath.txt)${PYTHONPATH:+:$PYTHONPATH}
set -euo pipefail
SITE="${FLASHPACK_SITE:-/tmp/site}"
PART1=.flashpack/part1; [ -d $PART1 ] || PART1=/tmp/flashpack_part1
[ -f $PART1/cu13.aa ] || { echo "install.sh: part1 not found (carry .flashpack/part1, or copy it to /tmp/flashpack_part1 in an earlier call)" >&2; exit 1; }
WHEEL=/tmp/$(cat .flashpack/part2/wheel_name.txt)
cat $PART1/cu13.aa .flashpack/part2/cu13.ab > "$WHEEL"
mkdir -p "$SITE"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  $PART1/*.whl "$WHEEL"
# A --target folder is no site directory: Python skips the .pth files its wheels bring (the CuTe DSL's puts its
# `cutlass` package on sys.path), so the folders they add are listed in $SITE/pythonpath.txt for PYTHONPATH.
EXTRA=$(PYTHONPATH=$SITE python3 -c "import site, sys; before = list(sys.path); site.addsitedir('$SITE')
print(':'.join(p for p in sys.path if p not in before))")
echo "$EXTRA" > "$SITE/pythonpath.txt"
PYTHONPATH=$SITE${EXTRA:+:$EXTRA} python3 -c "from flash_attn.cute import flash_attn_func; print('flash-attn-4 imports')"
