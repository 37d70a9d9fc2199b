#!/bin/bash
# WiC (5.4k sentence pairs sharing a word; accuracy) with vega-6b: the span-pair head compares the word's two
# occurrences; sentences are short (128 tokens).
# Hyper-parameters: DeBERTa's fine-tuning ranges for its 1.5B model (lr 1e-6..5e-6, batch 16..64, warm-up,
# linear decay, weight decay 0.01, Adam eps 1e-6, clipping 1.0, at most 10 epochs), the low end of the
# learning rates for the 4x larger vega-6b.
#   PLM=runs/vega6b-se/checkpoints SUPERGLUE_DATA=data/superglue bash examples/superglue/finetune_wic.sh [flags]
# Extra flags are appended (e.g. --max-train-examples 64); VEGA_DRY_RUN=1 only checks flags and layout.
# examples/slurm/finetune_superglue.sbatch sources this file for TASK_ARGS (one job-array element per task).
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"
RUN_DIR=${RUN_DIR:-runs/vega6b-superglue}
TASK_ARGS=(
  --task WiC --data-dir "${SUPERGLUE_DATA:-data/superglue}" --load "${PLM:-runs/vega6b-se/checkpoints}"
  --tokenizer-model "${TOKENIZER:-data/spm.model}" --tensor-model-parallel-size 4 --bf16
  --seq-length 128 --micro-batch-size 16 --global-batch-size 32 --epochs 5 --lr 3e-6 --lr-warmup-fraction 0.1
  --cls-dropout 0.1
  --save "$RUN_DIR/WiC" --predict "$RUN_DIR/predictions" --log-interval 10
)
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run, not sourced: one node, TP 4 x DP 2
  NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py "${TASK_ARGS[@]}" "$@"
fi
