#!/bin/bash
# ReCoRD (101k cloze queries on news passages; F1 and EM) with vega-6b, DeBERTa's recipe
# (experiments/superglue/record.sh, xxlarge-v2: 3 epochs, lr 3e-6, batch 64, 512 tokens, 1000 warm-up steps of
# ~4.7k, span-head dropout 0.15). Passages longer than the window are read in 512-token windows; micro-batches
# count windows.
#   PLM=runs/vega6b-se/checkpoints SUPERGLUE_DATA=data/superglue bash examples/superglue/finetune_record.sh [flags]
# Extra flags are appended (e.g. --max-train-examples 64); VEGA_DRY_RUN=1 only checks flags and layout.
# examples/slurm/finetune_superglue.sbatch sources this file for TASK_ARGS (one job-array element per task).
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"
RUN_DIR=${RUN_DIR:-runs/vega6b-superglue}
TASK_ARGS=(
  --task ReCoRD --data-dir "${SUPERGLUE_DATA:-data/superglue}" --load "${PLM:-runs/vega6b-se/checkpoints}"
  --tokenizer-model "${TOKENIZER:-data/spm.model}" --tensor-model-parallel-size 4 --bf16
  --seq-length 512 --micro-batch-size 4 --global-batch-size 64 --epochs 3 --lr 3e-6 --lr-warmup-fraction 0.2
  --cls-dropout 0.15
  --save "$RUN_DIR/ReCoRD" --predict "$RUN_DIR/predictions" --log-interval 10
)
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run, not sourced: one node, TP 4 x DP 2
  NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py "${TASK_ARGS[@]}" "$@"
fi
