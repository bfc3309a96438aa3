#!/usr/bin/env bash
# Device call 19 (one H100, 2026-11-24 fourth session): the 12 calibration shapes of call 2, same brief regime
# (12 s eager, 65,536-token steps), now with Gaussian-initialised matrices (model.weight_init: normal, the new
# default); the size model refitted on them, its accuracy table, and bits per code of each tensor kind.
source benchmarks/device_env.sh
timeout 520 bash benchmarks/calibration_runs.sh gpu runs/normal_calibration "$DATA" "$TOK"
dirs=$(ls -d runs/normal_calibration/*/ | while read d; do [ -f "$d/metrics.json" ] && echo "$d"; done)
python3 -m spaces calibrate $dirs --out "$OUT/size_calibration.json" 2>&1 | tail -3
python3 -m spaces accuracy $dirs --calibration "$OUT/size_calibration.json" > "$OUT/accuracy.md" 2>&1
tail -3 "$OUT/accuracy.md"
python3 benchmarks/code_bits.py runs/normal_calibration/*/model.ptz > "$OUT/code_bits.txt" 2>&1; cat "$OUT/code_bits.txt"
tar czf "$OUT/call19.tgz" runs/normal_calibration/*.log runs/normal_calibration/*/metrics.json
