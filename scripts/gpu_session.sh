#!/usr/bin/env bash
# One device call: GPU-only tests, solve speed (benchmarks/speed.py), then fine-tunes of shipped
# priors side by side for the minutes left before DEADLINE seconds.
# Usage: [CHECKS=0] [JOBS="MODEL:CONFIG:BATCH:LR ..."] scripts/gpu_session.sh DATA_DIR [DEADLINE_SECONDS]
# (writes under $OUT). CHECKS=0 skips the tests and speed runs so all the time goes to training;
# JOBS defaults to fine-tunes of the digits (config S) and medical (config B) priors.
set -u
data=$1; deadline=${2:-520}; start=$SECONDS
jobs=${JOBS:-"digits:S:256:5e-4 medical:B:128:3e-4"}
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
if [ "${CHECKS:-1}" != 0 ]; then
timeout 60 python3 -m pytest -q -o addopts="" -p no:xvfb -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
timeout 100 python3 benchmarks/speed.py --device cuda --threads 4 --skip-reference --rate-sizes 256,1024 \
  --rate-iterations 20 --solve-sizes 256,1024 --out "$OUT/speed_gpu_solves.json" 2>&1 | tail -12
timeout 75 python3 benchmarks/speed.py --device cuda --threads 4 --reference 3000 --rate-sizes "" \
  --budgets 100,200,300,500,1000 --out "$OUT/speed_gpu_reference.json" 2>&1 | tail -8
fi
minutes=$(python3 -c "print(round(max(1.0, ($deadline - $SECONDS + $start - 50) / 60), 2))")
echo "training for $minutes minutes"
runs=/tmp/train; mkdir -p $runs
models=""
for job in $jobs; do
  IFS=: read -r model config batch lr <<< "$job"
  models="$models $model"
  python3 scripts/train_shipped.py --model $model --config $config --batch $batch --lr $lr --seed 5 \
    --init sample_models/$model.safetensors --minutes $minutes --data "$data" --out $runs \
    --name $model-$config-gpu > $runs/$model-$config-gpu.stdout 2>&1 &
done
wait
rm -f $runs/*.ckpt
for m in $models; do tar -C $runs -cf "$OUT/$m-gpu.tar" $(cd $runs && ls $m-*); done
cat $runs/*.summary.json; tail -n 3 $runs/*.stdout
echo "elapsed $((SECONDS - start)) s"
