#!/bin/bash
# RTE (2.5k pairs; accuracy) with vega-6b; the same model predicts the AX-b and AX-g diagnostics when
# <SUPERGLUE_DATA>/AX-b/AX-b.jsonl and AX-g/AX-g.jsonl exist. DeBERTa's 1.5B ranges (lr 3e-6, batch 32, cls dropout
# 0.2; 320 tokens) with SiFT as in its *-sift recipes (lambda 5, step 1e-4, initial noise 1e-2, epochs doubled to 6),
# which its ablation credits with RTE 93.5 -> 96.5; one transductive round on the 3k test pairs. DeBERTa starts RTE
# from an MNLI-fine-tuned model: point PLM at one if you have it.
#   PLM=runs/vega6b-se/checkpoints SUPERGLUE_DATA=data/superglue bash examples/superglue/finetune_rte.sh [flags]
# Extra flags are appended (e.g. --max-train-examples 64); VEGA_DRY_RUN=1 only checks flags and layout.
# examples/slurm/finetune_superglue.sbatch sources this file for TASK_ARGS (one job-array element per task).
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"
RUN_DIR=${RUN_DIR:-runs/vega6b-superglue}
TASK_ARGS=(
  --task RTE --data-dir "${SUPERGLUE_DATA:-data/superglue}" --load "${PLM:-runs/vega6b-se/checkpoints}"
  --tokenizer-model "${TOKENIZER:-data/spm.model}" --tensor-model-parallel-size 4 --bf16
  --seq-length 320 --micro-batch-size 8 --global-batch-size 32 --epochs 6 --lr 3e-6 --lr-warmup-fraction 0.1
  --cls-dropout 0.2 --sift --sift-lambda 5 --sift-step-size 1e-4 --sift-init-perturbation 1e-2 --transductive-rounds 1
  --save "$RUN_DIR/RTE" --predict "$RUN_DIR/predictions" --log-interval 10
)
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run, not sourced: one node, TP 4 x DP 2
  NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py "${TASK_ARGS[@]}" "$@"
fi
