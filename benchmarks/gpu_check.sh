#!/usr/bin/env bash
# One-shot GPU check (about 10 minutes on one GPU). Installs nothing: needs torch with CUDA, transformers, datasets
# and the Fashion-MNIST IDX files ($FASHION_MNIST_DIR, default /usr/share/datasets/fashion-mnist). Writes logs and
# JSON to $OUT (default ./gpu_check).
#
#   OUT=/tmp/gpu_out bash benchmarks/gpu_check.sh
#
# Each step is bounded by `timeout`, so one slow step cannot eat the others' time, and a failed step does not stop
# the rest: 1. environment, 2. the book's recipe with the data on the GPU (bf16 + torch.compile), 3. the same
# through scripts/train.py (the Trainer), 4. benchmarks/benchmark.py on the GPU (batch 128 and 512).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA_DIR="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$SUMMARY"
  local start=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "--- $name: rc=$?, $((SECONDS - start)) s wall" | tee -a "$SUMMARY"
  tail -n 15 "$OUT/$name.log" >> "$SUMMARY"
}

step env 60 bash -c 'nvidia-smi; python -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"'
step gpu_book_run 180 python benchmarks/gpu_book_run.py --epochs 10 --data_dir "$DATA_DIR" \
  --json_out "$OUT/gpu_book_run.json"
step train_py 240 python scripts/train.py --output_dir "$OUT/run_book" --overwrite_output_dir --bf16 \
  --torch_compile --dataloader_num_workers 8 --save_strategy no --report_to none
step benchmark_b128 120 python benchmarks/benchmark.py --device cuda --steps 20 --trainer_steps 30 \
  --data_dir "$DATA_DIR" --json_out "$OUT/benchmark_cuda_b128.json"
step benchmark_b512 90 python benchmarks/benchmark.py --device cuda --batch_size 512 --steps 10 \
  --sections train bf16 --json_out "$OUT/benchmark_cuda_b512.json"
echo "done; logs and JSON in $OUT" | tee -a "$SUMMARY"
