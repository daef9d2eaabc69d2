#!/usr/bin/env bash
# Architecture comparison and shipped-model training in one GPU session: every candidate
# configuration of every prior trains in parallel for the same time budget; the best by
# validation bits/dim is shipped. Usage: scripts/gpu_train_all.sh DATA_DIR OUT_DIR MINUTES
set -u
data=${1:-/work/data}; out=${2:-runs}; minutes=${3:-8}
mkdir -p "$out/runs"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
pids=()
for model in ${MODELS:-nuclei medical digits}; do
  for config in A B C; do
    ${PYTHON:-python3} scripts/train_shipped.py --model $model --config $config --minutes "$minutes" \
      --data "$data" --out "$out/runs" > "$out/runs/$model-$config.stdout" 2>&1 &
    pids+=($!)
  done
done
for pid in "${pids[@]}"; do wait "$pid"; done
for model in ${MODELS:-nuclei medical digits}; do
  tar -C "$out/runs" -cf "$out/$model.tar" $(cd "$out/runs" && ls $model-* | grep -v ckpt)
done
cat "$out"/runs/*.summary.json
tail -n 3 "$out"/runs/*.stdout
