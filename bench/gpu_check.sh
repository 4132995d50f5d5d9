#!/usr/bin/env bash
# PLND throughput on a GPU machine: a random-init Llama-2-7B-shaped model in bf16
# (no download), plain forward vs PLND scoring (ffn+attn_v, and all four sites) at seq 512.
# Prints tokens/s and peak GPU memory; the last line is one JSON object.
# Usage (from the repository root): bash bench/gpu_check.sh [batch] [repeats]
set -euo pipefail
cd "$(dirname "$0")/.."
batch="${1:-4}"
repeats="${2:-2}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name())"
python3 -c "import langneurons" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHONUNBUFFERED=1 python3 bench/score_throughput.py \
    --preset llama2-7b --seq 512 --batch "$batch" --dtype bfloat16 --device cuda --repeats "$repeats"
