#!/usr/bin/env bash
# Device call 22 (same warm H100 as call 21): resume the search for another 480 s, then report and pack it up.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
S=/tmp/searches; N=h100_compiled
timeout -s INT -k 60 480 python3 -m search resume $N --storage $S > $OUT/resume.log 2>&1
echo "resume rc=$?"; tail -4 $OUT/resume.log
python3 -m search report $N --storage $S --format md --plot frontier.png > $OUT/report_stdout.txt 2>&1
tail -40 $OUT/report_stdout.txt
cp $S/$N/report/frontier.png $OUT/ 2>/dev/null
cd $S && tar -czf $OUT/search_files.tgz $N/report $N/study.db $N/search.json \
  $(find $N -name train.log -o -name failure.txt -o -name metrics.json | grep -v checkpoint) 2>/dev/null
