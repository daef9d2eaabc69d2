#!/usr/bin/env bash
# Architecture comparison and shipped-model training in one GPU session: the candidate
# configurations of every prior train in parallel for the same time budget; the best by
# validation bits/dim is shipped. Usage: scripts/gpu_train_all.sh DATA_DIR OUT_DIR MINUTES
# JOBS: space-separated MODEL:CONFIG[:BATCH[:INIT_FILE]] (with INIT_FILE: fine-tune that model).
set -u
data=${1:-/work/data}; out=${2:-runs}; minutes=${3:-8}
mkdir -p "$out/runs"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
pids=()
for job in ${JOBS:-nuclei:A nuclei:D nuclei:B medical:A medical:D medical:B digits:S digits:B}; do
  IFS=: read -r model config batch init <<< "$job"
  extra=(); name=$model-$config
  [ -n "$batch" ] && extra+=(--batch "$batch")
  [ -n "$init" ] && { extra+=(--init "$init"); name=$name-ft; }
  ${PYTHON:-python3} scripts/train_shipped.py --model $model --config $config --minutes "$minutes" \
    --data "$data" --out "$out/runs" --name $name "${extra[@]}" > "$out/runs/$name.stdout" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
for model in nuclei medical digits; do
  files=$(cd "$out/runs" && ls $model-* 2>/dev/null | grep -v ckpt)
  [ -n "$files" ] && tar -C "$out/runs" -cf "$out/$model.tar" $files
done
cat "$out"/runs/*.summary.json
tail -n 3 "$out"/runs/*.stdout
