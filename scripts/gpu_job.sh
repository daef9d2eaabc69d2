#!/usr/bin/env bash
# The one command run on the lent GPU machine (see scripts/gpu_train_all.sh).
set -u
bash scripts/gpu_train_all.sh .gpu_data /tmp/gpu_runs "${1:-7.5}" 2>&1 | tee "$OUT/train_all.txt"
cp /tmp/gpu_runs/*.tar "$OUT/"
