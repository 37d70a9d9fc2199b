#!/bin/bash
# PPT (docs/unimc_and_ppt.md, "PPT"): pre-train a soft prompt on self-supervised data from unlabelled text with the
# backbone frozen, then prompt-tune CB and RTE from it, against the same prompt tuning from a random and a vocab
# init (shallow prompts of the same length in all three, so only the start differs).
#   LOAD=runs/vega6b/checkpoints DATA_PATH=data/corpus SUPERGLUE=data/superglue bash examples/ppt.sh
#   TEXT=corpus.txt instead of DATA_PATH (plain text or JSONL); PPT_TASK=nss|unified (default nsp3);
#   LABEL_WORDS="no maybe yes" (each one tokenizer piece); PROMPT_LENGTH (100, PPT's); PPT_ITERS (2000);
#   EPOCHS (50), EXTRA_ARGS="--max-train-examples 32" (PPT's few-shot setting) shorten or shape the fine-tuning.
source "$(dirname "$0")/launch.sh"
RUN_DIR=${RUN_DIR:-runs/ppt}
LOAD=${LOAD:-runs/vega6b/checkpoints}
SUPERGLUE=${SUPERGLUE:-data/superglue}
PPT_TASK=${PPT_TASK:-nsp3}
EPOCHS=${EPOCHS:-50}
if [[ -n "${TEXT:-}" ]]; then CORPUS=(--text "$TEXT"); else CORPUS=(--data-path "${DATA_PATH:-data/corpus}"); fi
read -ra WORDS <<< "${LABEL_WORDS:-}"
[[ ${#WORDS[@]} -gt 0 ]] && WORDS=(--ppt-label-words "${WORDS[@]}")
read -ra EXTRA <<< "${EXTRA_ARGS:-}"
PROMPTS="$RUN_DIR/prompts"
PROMPT=(--prompt-type shallow --prompt-length "${PROMPT_LENGTH:-100}")
TP=(--tensor-model-parallel-size "${TP:-1}")

# 1. PPT: only the prompt trains (PPT's 100 vectors, weight decay 0.01, clip 1.0), best held-out pseudo-label accuracy.
launch tools/pretrain_prompt.py --load "$LOAD" "${CORPUS[@]}" --ppt-task "$PPT_TASK" "${WORDS[@]}" "${PROMPT[@]}" \
  --seq-length 256 --micro-batch-size 16 --lr "${PPT_LR:-1e-2}" --train-iters "${PPT_ITERS:-2000}" \
  --eval-interval 200 "${TP[@]}" --save "$PROMPTS/ppt_$PPT_TASK.pt"

# 2. Prompt tuning on CB and RTE from the PPT prompt (--init-prompt), from N(0, 1) and from frequent tokens' embeddings.
COMMON=(--load "$LOAD" --data-dir "$SUPERGLUE" --prompt-tuning "${PROMPT[@]}" --seq-length 256 --micro-batch-size 8
        --epochs "$EPOCHS" --lr "${LR:-1e-2}" --lr-warmup-fraction 0 --seed 11 "${TP[@]}" "${EXTRA[@]}")
launch finetune_superglue.py "${COMMON[@]}" --task CB --init-prompt "$PROMPTS/ppt_$PPT_TASK.pt" \
  --save-prompt "$PROMPTS/CB_ppt.pt"
launch finetune_superglue.py "${COMMON[@]}" --task CB --prompt-init random --save-prompt "$PROMPTS/CB_random.pt"
launch finetune_superglue.py "${COMMON[@]}" --task CB --prompt-init vocab --save-prompt "$PROMPTS/CB_vocab.pt"
launch finetune_superglue.py "${COMMON[@]}" --task RTE --init-prompt "$PROMPTS/ppt_$PPT_TASK.pt" \
  --save-prompt "$PROMPTS/RTE_ppt.pt"
launch finetune_superglue.py "${COMMON[@]}" --task RTE --prompt-init random --save-prompt "$PROMPTS/RTE_random.pt"
launch finetune_superglue.py "${COMMON[@]}" --task RTE --prompt-init vocab --save-prompt "$PROMPTS/RTE_vocab.pt"
if [[ "${VEGA_DRY_RUN:-0}" != 1 ]]; then
  python3 "$VEGA_ROOT/tools/prompt_summary.py" "$PROMPTS"/*.pt | tee "$RUN_DIR/summary.txt"
fi
