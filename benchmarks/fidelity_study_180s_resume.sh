#!/usr/bin/env bash
# Device calls after fidelity_study_180s.sh's (twelfth session, one H100, a fresh machine): the rung-fidelity
# study goes on from its study alone (`search resume --from-study`, with what the first machine sent back, copied
# to benchmarks/results/call76/c76_state.tgz; STATES=... names a later one), launching the rest of its 24 trials, none after 1,050 s. Carry
# .whl in a first call, then .raypack .searchpack; run until it prints "done: 0".
TAG=c76b N=h100_fidelity_180s_cool10 STATES=${STATES:-benchmarks/results/call76/c76_state.tgz}
source benchmarks/resume_from_study_one_gpu.sh
