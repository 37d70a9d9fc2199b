#!/bin/bash
# MT-DNN with PDR for CB, RTE and COPA (docs/pdr_and_multitask.md): stage 1 trains one encoder with a head per task
# on single-task batches (tasks drawn in proportion to their batches), PDR on every step, keeping the epoch with
# the best mean dev score; stage 2 fine-tunes each task alone from that checkpoint, its head kept.
# Hyper-parameters: MT-DNN's defaults (5 epochs, warm-up 0.1, clipping 1.0; PDR alpha 1, noise 1e-5) at the
# learning rates of examples/superglue/finetune_<task>.sh for vega-6b.
#   PLM=runs/vega6b-se/checkpoints SUPERGLUE_DATA=data/superglue bash examples/superglue/multitask.sh
#   MODEL_PRESET=tiny TOKENIZER=spm.model ...   a random backbone instead of PLM (smoke runs; stage 2 then
#   reads the model and tokenizer from the stage-1 checkpoint)
# EXTRA_ARGS="--max-train-examples 64 ..." shortens every launch; VEGA_DRY_RUN=1 only checks flags and layout.
# examples/slurm/multitask.sbatch sources this file for the arguments and runs the same launches.
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"
RUN_DIR=${RUN_DIR:-runs/vega6b-mtdnn}
SUPERGLUE_DATA=${SUPERGLUE_DATA:-data/superglue}
if [[ -n "${MODEL_PRESET:-}" ]]; then
  BACKBONE=(--model-preset "$MODEL_PRESET" --tokenizer-model "${TOKENIZER:?TOKENIZER=spm.model with MODEL_PRESET}")
else
  BACKBONE=(--load "${PLM:-runs/vega6b-se/checkpoints}" --tokenizer-model "${TOKENIZER:-data/spm.model}")
fi
read -ra EXTRA <<< "${EXTRA_ARGS:-}"
COMMON=(--data-dir "$SUPERGLUE_DATA" --tensor-model-parallel-size "${TP:-4}" --seq-length 256 --micro-batch-size 8
        --global-batch-size 16 --lr-warmup-fraction 0.1 --pdr --pdr-divergence js --log-interval 10 "${EXTRA[@]}")
# Stage 1: multi-task, every task's dev score each epoch, the best mean kept; leaderboard files of all three.
STAGE1=("${BACKBONE[@]}" "${COMMON[@]}" --multitask CB,RTE,COPA --epochs 5 --lr 3e-6 --save "$RUN_DIR/multitask"
        --predict "$RUN_DIR/predictions/multitask")
# Stage 2: each task alone from the multi-task checkpoint (its model, tokenizer and the task's head).
STAGE2=(--load "$RUN_DIR/multitask" "${COMMON[@]}" --epochs 3 --lr 2e-6)
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run, not sourced: one node, TP 4 x DP 2
  NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py "${STAGE1[@]}"
  NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py "${STAGE2[@]}" --task CB --save "$RUN_DIR/CB" \
    --predict "$RUN_DIR/predictions/stage2"
  NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py "${STAGE2[@]}" --task RTE --save "$RUN_DIR/RTE" \
    --predict "$RUN_DIR/predictions/stage2"
  NPROC_PER_NODE=${NPROC_PER_NODE:-8} launch finetune_superglue.py "${STAGE2[@]}" --task COPA --save "$RUN_DIR/COPA" \
    --predict "$RUN_DIR/predictions/stage2"
fi
