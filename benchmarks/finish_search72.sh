#!/usr/bin/env bash
# Run in call 84 (thirteenth session, one H100; results in benchmarks/results/call84; its last 7 trials
# are still unlaunched):
# finish call 72's 24-trial search at 180 s (one ASHA rung at 60 s) from its study alone. Its
# Tune state did not come back (the files sent back are the study, settings and logs), so `search resume
# --from-study`: its three trials in flight start again as new trials and ten more launch. Then the report, and
# the 60 s rung's fidelity pooled with call 63's search (its study is in call 68's files). Nothing to prepare:
# both searches' files are tracked. Carry .whl in a first call, then .raypack .searchpack; run until it prints
# "done: 0".
TAG=f72 N=h100_search24_180s_r60 POOL=h100_search24_180s
STATES="benchmarks/results/call72/c72_files.tgz benchmarks/results/call68/c68_search_files.tgz"
source benchmarks/resume_from_study_one_gpu.sh
