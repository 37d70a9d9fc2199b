"""Prompt transferability (docs/prompt_tuning_and_panda.md; a reconstruction: the paper's exact
formula is not public).

A prompt P and a task's inputs D give a task embedding: the FFN activations (post-GELU) at [CLS] of every layer,
averaged over D and concatenated, E(P, D) in R^(L * d_ff). The transferability of source S to target T runs the
same target inputs through the frozen backbone with each prompt, so both embeddings share one space:

    T(S -> T) = sim(E(P_S, D_T), E(P_T, D_T))

sim is ``cosine``, or ``overlap`` (Su et al.'s overlapping activated neurons): the cosine of the binary vectors
1[E > 0]. Both are symmetric in their two embeddings and 1 for a prompt against itself; the matrix is not
symmetric in general, since row S and column T use T's data.

Raw activations share a large common component (whatever the prompt, the same backbone reads the same inputs),
so raw cosines crowd near 1. ``center="backbone"`` compares what each prompt changes instead:
E(P, D) - E(no prompt, D). The default stays the spec's raw form.
"""
import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

from megatron_vega import runtime
from megatron_vega.model.attention_inputs import AttentionInputs

METRICS = ("cosine", "overlap")
CENTERS = ("none", "backbone")


@torch.no_grad()
def task_embedding(encoder, prompt, batches) -> torch.Tensor:
    """E(prompt, D): mean over every sequence of D (``batches``, an iterable of collated fine-tuning batches) of
    the concatenated per-layer FFN activations at [CLS] (``prompt`` None: the backbone alone)."""
    per_layer = [torch.zeros(encoder.cfg.ffn_hidden_size, dtype=torch.float64) for _ in encoder.layers]

    def hook(i):
        def record(module, args, out):
            inner, bias = out  # linear_fc1 skips its bias add: GELU(inner + bias) is the activation
            cls = F.gelu(inner[0] + bias).float()  # position 0 = [CLS] for deep and shallow prompts: [b, d_ff/tp]
            per_layer[i] += gather_from_tensor_model_parallel_region(cls).sum(0).double().cpu()
        return record

    hooks = [layer.linear_fc1.register_forward_hook(hook(i)) for i, layer in enumerate(encoder.layers)]
    was_training = encoder.training
    encoder.eval()
    rows = 0
    try:
        for batch in batches:
            batch = {k: v.to(runtime.device()) for k, v in batch.items()}
            if prompt is None:
                encoder(batch["tokens"], AttentionInputs.from_batch(batch))
            else:
                prompt.eval()(encoder, batch)
            rows += batch["tokens"].shape[0]
    finally:
        for h in hooks:
            h.remove()
        encoder.train(was_training)
    return torch.cat(per_layer) / max(rows, 1)


def similarity(a: torch.Tensor, b: torch.Tensor, metric: str) -> float:
    if metric == "overlap":
        a, b = (a > 0).double(), (b > 0).double()
    return float(F.cosine_similarity(a.double(), b.double(), dim=0))


def transfer_matrix(embed, sources: list[str], targets: list[str], metric: str, center: str = "none") -> dict:
    """``embed(prompt_name or None, target)`` -> E(P_name, D_target). Returns {source: {target: T(source ->
    target)}}."""
    matrix = {s: {} for s in sources}
    for target in targets:
        base = embed(None, target) if center == "backbone" else 0.0
        reference = embed(target, target) - base
        for source in sources:
            matrix[source][target] = similarity(embed(source, target) - base, reference, metric)
    return matrix


def format_table(matrix: dict, targets: list[str], metric: str) -> str:
    width = max(16, *(len(s) for s in matrix)) + 2
    corner = "source \\ target"
    lines = [f"{corner:<{width}}" + "".join(f"{t:>10}" for t in targets) + f"   ({metric})"]
    for source, row in matrix.items():
        lines.append(f"{source:<{width}}" + "".join(f"{row[t]:>10.4f}" for t in targets))
    return "\n".join(lines)

