#!/usr/bin/env bash
# Device calls 39-41 (one H100, sixth session): call 37's search again after its fix. In call 37 six of 24 trials
# ran out of GPU memory: three processes' warm-ups (15-36 GB each) beside a trial training, and a finished
# holder's cached blocks. Now two trials per GPU, a waiting trial may use half the GPU's memory (a warm-up past
# that waits for the turn and warms up again), and a holder empties its cache before handing the GPU on. Same
# space, budget, rungs and seed otherwise (benchmarks/search24_one_gpu.sh).
TAG=c38 N=h100_shared24b PER_GPU=2 CPUS=8
source benchmarks/search24_one_gpu.sh
