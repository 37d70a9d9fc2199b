#!/bin/bash
# COPA (400 questions, 2 choices; accuracy) with vega-6b, DeBERTa's recipe (experiments/superglue/copa.sh,
# xxlarge-v2: 8 epochs, lr 1e-6, batch 24, 136 tokens, 30 warm-up steps of ~130). DeBERTa starts COPA from an
# MNLI-fine-tuned model: point PLM at one if you have it. One transductive round on the 500 test questions.
# Micro-batches count questions (two sequences each).
#   PLM=runs/vega6b-se/checkpoints SUPERGLUE_DATA=data/superglue bash examples/superglue/finetune_copa.sh [flags]
# Extra flags are appended (e.g. --max-train-examples 64); VEGA_DRY_RUN=1 only checks flags and layout.
# examples/slurm/finetune_superglue.sbatch sources this file for TASK_ARGS (one job-array element per task).
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"
RUN_DIR=${RUN_DIR:-runs/vega6b-superglue}
TASK_ARGS=(
  --task COPA --data-dir "${SUPERGLUE_DATA:-data/superglue}" --load "${PLM:-runs/vega6b-se/checkpoints}"
  --tokenizer-model "${TOKENIZER:-data/spm.model}" --tensor-model-parallel-size 4 --bf16
  --seq-length 136 --micro-batch-size 4 --global-batch-size 24 --epochs 8 --lr 1e-6 --lr-warmup-fraction 0.2
  --transductive-rounds 1
  --save "$RUN_DIR/COPA" --predict "$RUN_DIR/predictions" --log-interval 10
)
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run, not sourced: one node, TP 4 x DP 2
  NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py "${TASK_ARGS[@]}" "$@"
fi
