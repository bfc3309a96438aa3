#!/usr/bin/env bash
# Device calls 37-38 (one H100, sixth session; the 2- and 4-GPU kinds were not lent): issue #6 item 3 on the
# one GPU there is, with three trials placed on the GPU (--trials-per-gpu 3): two start up and compile while the
# third trains, so new shapes' cold compiles (~50-60 s each) hide behind training. The search itself:
# benchmarks/search24_one_gpu.sh. About 20 minutes over consecutive calls.
TAG=c37 N=h100_shared24 PER_GPU=3 CPUS=5
source benchmarks/search24_one_gpu.sh
