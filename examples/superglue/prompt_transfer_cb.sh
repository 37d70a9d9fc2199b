#!/bin/bash
# PANDA for CB (docs/prompt_tuning_and_panda.md): prompt-tune the sources RTE and WSC and the target CB alone; vanilla transfer
# (CB from each source prompt: PANDA's target-like teachers); the transferability of each source to CB; PANDA
# students distilled from each teacher with lambda from that metric. Deep prompts of 20, as the released scripts
# (lr 1e-2 prompt tuning / transfer, 7e-3 PANDA, batch 16, seq 128, seed 11, 100 epochs).
#   LOAD=runs/vega6b/checkpoints SUPERGLUE=data/superglue bash examples/superglue/prompt_transfer_cb.sh
#   MODEL_PRESET=tiny TOKENIZER=spm.model ...   a random backbone instead of LOAD (smoke runs)
#   EPOCHS=N, EXTRA_ARGS="--max-train-examples 64 ..." shorten it; RUN_DIR sets where everything goes.
source "$(dirname "$0")/../launch.sh"
RUN_DIR=${RUN_DIR:-runs/panda-cb}
SUPERGLUE=${SUPERGLUE:-data/superglue}
EPOCHS=${EPOCHS:-100}
if [[ -n "${MODEL_PRESET:-}" ]]; then
  BACKBONE=(--model-preset "$MODEL_PRESET" --tokenizer-model "${TOKENIZER:?TOKENIZER=spm.model with MODEL_PRESET}")
else
  BACKBONE=(--load "${LOAD:-runs/vega6b/checkpoints}")
fi
read -ra EXTRA <<< "${EXTRA_ARGS:-}"
PROMPTS="$RUN_DIR/prompts"   # (finetune_superglue.py creates it with the first prompt file)
COMMON=("${BACKBONE[@]}" --data-dir "$SUPERGLUE" --prompt-tuning --prompt-type deep --prompt-length 20
        --seq-length 128 --micro-batch-size 16 --epochs "$EPOCHS" --seed 11 --lr-warmup-fraction 0
        --tensor-model-parallel-size "${TP:-1}" "${EXTRA[@]}")

# 1. Source prompts, and CB's own prompt (the baseline, and the metric's reference for CB).
launch finetune_superglue.py "${COMMON[@]}" --task RTE --lr 1e-2 --save-prompt "$PROMPTS/RTE.pt"
launch finetune_superglue.py "${COMMON[@]}" --task WSC --lr 1e-2 --save-prompt "$PROMPTS/WSC.pt"
launch finetune_superglue.py "${COMMON[@]}" --task CB --lr 1e-2 --save-prompt "$PROMPTS/CB.pt"
# 2. Vanilla prompt transfer: CB from each source prompt. These are PANDA's target-like teachers.
launch finetune_superglue.py "${COMMON[@]}" --task CB --lr 1e-2 --init-prompt "$PROMPTS/RTE.pt" \
  --save-prompt "$PROMPTS/CB_from_RTE.pt"
launch finetune_superglue.py "${COMMON[@]}" --task CB --lr 1e-2 --init-prompt "$PROMPTS/WSC.pt" \
  --save-prompt "$PROMPTS/CB_from_WSC.pt"
# 3. Transferability of each source to CB, on CB's inputs.
launch tools/prompt_transferability.py "${BACKBONE[@]}" --prompts "RTE=$PROMPTS/RTE.pt" "WSC=$PROMPTS/WSC.pt" \
  "CB=$PROMPTS/CB.pt" --targets CB --data-dir "$SUPERGLUE" --json "$RUN_DIR/transferability.json" \
  --tensor-model-parallel-size "${TP:-1}"
# 4. PANDA students: a fresh prompt, CE + 0.1 * lambda * KD(MSE) against each teacher, lambda = T(source -> CB).
launch finetune_superglue.py "${COMMON[@]}" --task CB --lr 7e-3 --panda-teacher "$PROMPTS/CB_from_RTE.pt" \
  --panda-transferability "$RUN_DIR/transferability.json" --save-prompt "$PROMPTS/CB_panda_RTE.pt" \
  --predict "$RUN_DIR/predictions/panda_RTE"
launch finetune_superglue.py "${COMMON[@]}" --task CB --lr 7e-3 --panda-teacher "$PROMPTS/CB_from_WSC.pt" \
  --panda-transferability "$RUN_DIR/transferability.json" --save-prompt "$PROMPTS/CB_panda_WSC.pt" \
  --predict "$RUN_DIR/predictions/panda_WSC"
if [[ "${VEGA_DRY_RUN:-0}" != 1 ]]; then
  python3 "$VEGA_ROOT/tools/prompt_summary.py" "$PROMPTS"/CB*.pt | tee "$RUN_DIR/summary.txt"
fi
