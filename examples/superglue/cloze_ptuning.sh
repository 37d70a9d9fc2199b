#!/bin/bash
# Cloze fine-tuning with P-tuning's continuous prompt (docs/glm_and_cloze.md) of one SuperGLUE task (TASK: RTE,
# CB, BoolQ, COPA, WiC, WSC or MultiRC) from a GLM checkpoint (examples/pretrain_glm.sh; an MLM checkpoint is read
# PET-style at [MASK]). GLM's fine-tuning settings: lr 1e-5, linear decay, warm-up 10 %, weight decay 0.1, batch 16,
# seq 256 (WSC 128, MultiRC 512); the prompt encoder (bi-LSTM + MLP, 2 vectors per [P]) learns at 1e-4 as in
# P-tuning's RTE/BoolQ scripts (1e-5 in its CB and COPA ones). Drop --prompt-encoder for the manual pattern alone.
#   TASK=CB PLM=runs/glm-base/checkpoints SUPERGLUE_DATA=data/superglue bash examples/superglue/cloze_ptuning.sh
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"
TASK=${TASK:-RTE}
case "$TASK" in WSC) SEQ=128 ;; MultiRC) SEQ=512 ;; *) SEQ=256 ;; esac
RUN_DIR=${RUN_DIR:-runs/glm-cloze}
ARGS=(
  --task "$TASK" --format cloze --data-dir "${SUPERGLUE_DATA:-data/superglue}" --load "${PLM:-runs/glm-base/checkpoints}"
  --tokenizer-model "${TOKENIZER:-data/spm.model}" --tensor-model-parallel-size 2
  --seq-length "${SEQ_LENGTH:-$SEQ}" --micro-batch-size 8 --global-batch-size 16 --epochs "${EPOCHS:-50}" --lr 1e-5
  --lr-warmup-fraction 0.1 --weight-decay 0.1
  --prompt-encoder lstm --cloze-prompt-length 2 --cloze-prompt-lr "${PROMPT_LR:-1e-4}"
  --save "$RUN_DIR/$TASK" --predict "$RUN_DIR/predictions" --log-interval 10
)
NPROC_PER_NODE=${NPROC_PER_NODE:-2} launch finetune_superglue.py "${ARGS[@]}" "$@"
