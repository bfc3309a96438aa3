#!/usr/bin/env bash
# Device calls 44-47 (one H100, seventh session): call 38's 24-trial search (same space, budget, rungs, seed, two
# trials per GPU) on all four train shards (38.3M tokens) instead of two (20.0M). On two shards a 120 s baseline run
# makes 11 passes over the train set and its val_bpb at 120 s is worse than at 60 s (1.31 vs 1.22): the search's
# 60 s ranking and the rerun's 120 s ranking then measure different amounts of overfitting. The pack now holds every
# shard (benchmarks/make_data_pack.py). Run in consecutive calls until it prints "done: 0". Call 44 started it on a
# machine that went back idle before the next call; calls 45-47 ran it in full on a fresh one.
TAG=c44 N=h100_full4_24 PER_GPU=2 CPUS=8
source benchmarks/search24_one_gpu.sh
