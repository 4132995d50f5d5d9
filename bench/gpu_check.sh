#!/usr/bin/env bash
# PLND throughput on a GPU machine: a random-init Llama-2-7B-shaped model in bf16 (scores
# accumulate in fp32; no download), plain forward vs PLND scoring: ffn+attn_v, all four sites
# with exact q/k (qk_mode=exact) and with the second-order q/k (qk_mode=fast), at seq 512.
# Prints tokens/s and peak GPU memory of each; the last line is one JSON object.
#
# Usage (from the repository root): bash bench/gpu_check.sh [batch] [rounds]
#        bash bench/gpu_check.sh --cpu   # the same script on the CPU, tiny shape (checks that it runs)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import langneurons" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ "${1:-}" == "--cpu" ]]; then
    exec env PYTHONUNBUFFERED=1 python3 bench/score_throughput.py \
        --preset tiny --seq 64 --batch 2 --dtype bfloat16 --device cpu --rounds 1
fi
batch="${1:-4}"
rounds="${2:-2}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name())"
PYTHONUNBUFFERED=1 python3 bench/score_throughput.py \
    --preset llama2-7b --seq 512 --batch "$batch" --dtype bfloat16 --device cuda --rounds "$rounds"
