#!/usr/bin/env bash
# One-shot GPU check (about 10 minutes on one H100; untested on a GPU so far: prepared on a CPU-only machine).
# Installs nothing. Needs the repo's environment (torch with CUDA, transformers, datasets) and the Fashion-MNIST IDX
# files (/usr/share/datasets/fashion-mnist or $FASHION_MNIST_DIR). Writes logs and JSON to $OUT (default ./gpu_check).
#
#   OUT=/tmp/gpu_out bash scripts/gpu_check.sh
#
# Steps (each bounded by `timeout`, so one slow step cannot eat the others' time; a failed step does not stop the rest):
#   1. environment + nvidia-smi
#   2. GPU-resident book recipe (python -m hf_vit_d2l.fast gpu-run): 10 epochs, SGD lr 0.1, batch 128, eval after
#      every epoch, bf16 autocast + torch.compile, data on the GPU as uint8 -> the < 60 s target
#   3. the same through scripts/train.py (Trainer) with the fast options: bf16, torch.compile, tensor preprocessing,
#      8 dataloader workers, pinned memory, persistent workers
#   4. scripts/benchmark.py --device cuda (fp32 and bf16 autocast, batch 128 and 512)
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA_DIR="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee -a "$SUMMARY"
  local start=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "--- $name: rc=$rc, $((SECONDS - start)) s wall" | tee -a "$SUMMARY"
  tail -n 15 "$OUT/$name.log" >> "$SUMMARY"
}

step env 60 bash -c 'nvidia-smi; python -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else None)"; ls -la '"$DATA_DIR"

step gpu_resident_bf16_compile 180 python -m hf_vit_d2l.fast gpu-run --epochs 10 --data_dir "$DATA_DIR" \
  --json "$OUT/gpu_resident_bf16_compile.json"

step train_py_fast 240 python scripts/train.py --output_dir "$OUT/run_book_fast" --overwrite_output_dir \
  --data_source local --data_dir "$DATA_DIR" --bf16 --torch_compile --attn_implementation sdpa \
  --preprocessing_backend tensor --dataloader_num_workers 8 --dataloader_pin_memory \
  --dataloader_persistent_workers --save_strategy no --report_to none
cp "$OUT/run_book_fast/all_results.json" "$OUT/train_py_fast_all_results.json" 2>/dev/null

step benchmark_fp32 90 python scripts/benchmark.py --device cuda --steps 20 --repeats 5 --trainer_steps 30 \
  --loss_curve_steps 100 --json_out "$OUT/benchmark_cuda_fp32.json"
step benchmark_bf16_b512 60 python scripts/benchmark.py --device cuda --dtype bf16 --batch_size 512 --steps 10 \
  --repeats 5 --skip data trainer loss_curve d2l_book --json_out "$OUT/benchmark_cuda_bf16_b512.json"

echo "done; logs and JSON in $OUT" | tee -a "$SUMMARY"
