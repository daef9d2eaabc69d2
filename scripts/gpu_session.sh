#!/usr/bin/env bash
# One device call: GPU-only tests, solve speed (benchmarks/speed.py), then fine-tunes of the shipped
# digits and medical priors side by side for the minutes left before DEADLINE seconds.
# Usage: scripts/gpu_session.sh DATA_DIR [DEADLINE_SECONDS]   (writes under $OUT)
set -u
data=$1; deadline=${2:-520}; start=$SECONDS
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
timeout 60 python3 -m pytest -q -o addopts="" -p no:xvfb -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
timeout 100 python3 benchmarks/speed.py --device cuda --threads 4 --skip-reference --rate-sizes 256,1024 \
  --rate-iterations 20 --solve-sizes 256,1024 --out "$OUT/speed_gpu_solves.json" 2>&1 | tail -12
timeout 75 python3 benchmarks/speed.py --device cuda --threads 4 --reference 3000 --rate-sizes "" \
  --budgets 100,200,300,500,1000 --out "$OUT/speed_gpu_reference.json" 2>&1 | tail -8
minutes=$(python3 -c "print(round(max(1.0, ($deadline - $SECONDS + $start - 50) / 60), 2))")
echo "training for $minutes minutes"
runs=/tmp/train; mkdir -p $runs
python3 scripts/train_shipped.py --model digits --config S --batch 256 --lr 5e-4 --seed 5 \
  --init sample_models/digits.safetensors --minutes $minutes --data "$data" --out $runs --name digits-S-gpu \
  > $runs/digits-S-gpu.stdout 2>&1 &
python3 scripts/train_shipped.py --model medical --config B --batch 128 --lr 3e-4 --seed 5 \
  --init sample_models/medical.safetensors --minutes $minutes --data "$data" --out $runs --name medical-B-gpu \
  > $runs/medical-B-gpu.stdout 2>&1 &
wait
rm -f $runs/*.ckpt
for m in digits medical; do tar -C $runs -cf "$OUT/$m-gpu.tar" $(cd $runs && ls $m-*); done
cat $runs/*.summary.json; tail -n 3 $runs/*.stdout
echo "elapsed $((SECONDS - start)) s"
