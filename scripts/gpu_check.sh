#!/usr/bin/env bash
# GPU checks in one device call: the CUDA-graph tests, solve speed (benchmarks/speed.py), then a
# digits fine-tune for the remaining minutes, written straight under $OUT.
# Usage: scripts/gpu_check.sh TRAIN_MINUTES
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if python3 -c "import pytest" 2>/dev/null; then
  timeout 60 python3 -m pytest -q -o addopts="" -p no:xvfb tests/test_gpu.py 2>&1 | tail -15
else
  timeout 60 python3 tests/test_gpu.py 2>&1 | tail -15
fi
timeout 110 python3 benchmarks/speed.py --device cuda --threads 4 --skip-reference --rate-sizes 256,1024 \
  --rate-iterations 20 --solve-sizes 256,1024 --compile --out "$OUT/speed_gpu_solves.json" 2>&1 | tail -12
timeout 75 python3 benchmarks/speed.py --device cuda --threads 4 --reference 3000 --rate-sizes "" \
  --budgets 100,200,300,500,1000 --out "$OUT/speed_gpu_reference.json" 2>&1 | tail -8
JOBS="digits:S:256:sample_models/digits.safetensors" timeout 195 \
  bash scripts/gpu_train_all.sh .gpu_data "$OUT/train" "$1" 2>&1 | tail -3
rm -f "$OUT"/train/runs/*.ckpt "$OUT"/train/*.tar
true
