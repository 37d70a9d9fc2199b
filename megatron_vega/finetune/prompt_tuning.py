"""Turning a fine-tuning model into a prompt-tuning one: freeze the encoder, attach the task's prompt (new,
continued or transferred), and build PANDA's teacher on the same frozen encoder.

Roles (docs/prompt_tuning_and_panda.md): a source prompt is tuned on its task; vanilla transfer (--init-prompt)
starts the target task from it (prompt and head tensors except the classifier) and tunes on the target - that is PANDA's
target-like teacher; the PANDA student is a fresh prompt trained on CE + c*lambda*KD against the teacher.
"""
import torch

from megatron_vega import runtime
from megatron_vega.finetune.task_model import TaskModel
from megatron_vega.finetune.tasks import build_head
from megatron_vega.prompt.panda import balancing_factor
from megatron_vega.prompt.store import build_prompt, load_all, load_weights, prompt_from_file, read_prompt_file


def attach_prompt(run, model, model_cfg, tokenizer, dtype) -> dict:
    """Freeze ``model.encoder``, give ``model`` its prompt; returns the provenance saved with the prompt."""
    p, task = run.prompt, run.task.task
    for param in model.encoder.parameters():
        param.requires_grad_(False)
    origin = {"transferred_from": None}
    if p.load_prompt:
        state = read_prompt_file(p.load_prompt, model_cfg, task)
        prompt = prompt_from_file(state, model_cfg, p.load_prompt)
        load_all(model.head, state["head"], p.load_prompt, "head")
        origin["transferred_from"] = state.get("transferred_from")
    elif p.init_prompt:
        state = read_prompt_file(p.init_prompt, model_cfg)
        prompt = prompt_from_file(state, model_cfg, p.init_prompt)
        head = load_weights(model.head, state["head"], skip=lambda name: "classifier" in name)
        origin["transferred_from"] = {"task": state["task"], "file": p.init_prompt, "head_tensors": head}
    else:
        prompt = build_prompt(p, model_cfg, model.encoder, tokenizer, run.optim.seed)
    model.prompt = prompt.to(device=runtime.device(), dtype=dtype)
    return origin


def build_teacher(run, model, model_cfg, dtype):
    """PANDA's teacher: the student's (frozen, shared) encoder + the teacher file's prompt and head, never
    updated. Returns (teacher, lambda, where lambda came from) or (None, 0, '') without --panda-teacher."""
    cfg, task = run.panda, run.task.task
    if not cfg.panda_teacher:
        return None, 0.0, ""
    state = read_prompt_file(cfg.panda_teacher, model_cfg, task)
    prompt = prompt_from_file(state, model_cfg, cfg.panda_teacher)
    head = build_head(task, model_cfg.hidden_size, run.optim.cls_dropout)
    load_all(head, state["head"], cfg.panda_teacher, "head")
    teacher = TaskModel(model.encoder, head.to(device=runtime.device(), dtype=dtype),
                        prompt.to(device=runtime.device(), dtype=dtype))
    for param in teacher.parameters():
        param.requires_grad_(False)
    teacher.source_task = (state.get("transferred_from") or {}).get("task")
    lam, where = balancing_factor(cfg, teacher.source_task, task)
    return teacher, lam, where


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def teacher_logits(teacher, batch, mode: str) -> torch.Tensor:
    """The teacher's logits without gradients, in train (dropout, as the released code) or eval mode; the shared
    encoder is put back in training mode."""
    with torch.no_grad():
        teacher.train(mode == "train")
        try:
            return teacher(batch)
        finally:
            teacher.train()
