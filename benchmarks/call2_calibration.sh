#!/usr/bin/env bash
# Device call 2 (H100): 12 calibration shapes trained briefly, then the size model fitted on them
# plus call 1's longer runs (still on the warm machine), and its accuracy table.
source benchmarks/device_env.sh
timeout 430 bash benchmarks/calibration_runs.sh gpu runs/gpu_calibration "$DATA" "$TOK"
dirs=$(ls -d runs/gpu_calibration/*/ runs/gpu/*/ 2>/dev/null | while read d; do [ -f "$d/model.ptz" ] && echo "$d"; done)
python3 -m spaces calibrate $dirs --out "$OUT/size_calibration.json" 2>&1 | tail -5
python3 -m spaces accuracy $dirs --calibration "$OUT/size_calibration.json" > "$OUT/accuracy.md" 2>&1 || \
  python3 -m spaces accuracy $dirs > "$OUT/accuracy.md" 2>&1
cat "$OUT/accuracy.md"
tar czf "$OUT/call2.tgz" runs/gpu_calibration/*.log runs/gpu_calibration/*/metrics.json
timeout 70 python3 benchmarks/profile_step.py > "$OUT/profile_eager.txt" 2>&1; head -45 "$OUT/profile_eager.txt"
