"""Self-evolution stage 1, self-questioning (docs/self_evolution.md): run the trained model in eval mode without
gradients over the UNMASKED training blocks and record, per block id, the positions whose gold token the model
neglects (NLL > τ by default). Special tokens and padding are never recorded (``neglected_index.candidates``).

The blocks of the train split are cut into shards of consecutive block ids; data-parallel replicas take shards
round-robin and each writes its shard file atomically, so an interrupted run resumes by skipping finished shards
and the merged index does not depend on the number of replicas. The per-token NLL comes from the vocab-parallel
logits (max and sum-exp all-reduced over TP), never gathering the vocabulary on one rank.
"""
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from megatron_vega.cli import option
from megatron_vega.model.attention_inputs import AttentionInputs
from megatron_vega.selfevolution.neglected_index import candidates, merge, select_neglected, write_index
from megatron_vega.training.batches import broadcast_batch, host_batch


@dataclass
class MiningConfig:
    output: str = option("", "Where to write the neglected-token index.", flag="--output")
    threshold: float = option(0.1, "τ: a token is neglected when its NLL exceeds this (nats).")
    criterion: str = option("nll", "Selection rule: NLL > τ (the SE4PLMs code) or a wrong argmax.",
                            choices=["nll", "argmax"])
    max_per_block: int | None = option(None, "Keep at most this many positions per block (highest NLL first).")
    max_ratio: float | None = option(None, "Keep at most this fraction of a block's tokens.")
    blocks_per_shard: int = option(4096, "Blocks per shard file (the unit of resumption).")


def _per_token_stats(logits, labels):
    """NLL of the gold token and whether it is the argmax, from this rank's vocabulary shard."""
    nll = vocab_parallel_cross_entropy(logits.clone(), labels)
    group = parallel_state.get_tensor_model_parallel_group()
    local_max = logits.max(dim=-1).values
    global_max = local_max.clone()
    dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
    sum_exp = torch.exp(logits - global_max[:, None]).sum(dim=-1)
    dist.all_reduce(sum_exp, group=group)
    gold_logit = global_max + torch.log(sum_exp) - nll  # logsumexp - nll
    return nll, gold_logit >= global_max - 1e-6


class Miner:
    def __init__(self, chunks, tc, dataset, micro_batch_size: int, seq_length: int):
        self.chunks, self.tc, self.dataset = chunks, tc, dataset
        self.micro_batch_size, self.seq_length = micro_batch_size, seq_length

    def _forward_step(self, results, data_iterator, model):
        batch = next(data_iterator)
        output = model(batch["labels"], AttentionInputs.from_batch(batch), lm_positions=batch["lm_positions"])

        def collect(logits):
            nll, correct = _per_token_stats(logits, batch["labels"].t().reshape(-1)[batch["lm_positions"]])
            results.append((batch, nll, correct))
            return logits.new_zeros(()), {}
        return output, collect

    @torch.no_grad()
    def score(self, block_ids: np.ndarray) -> list[tuple[dict, torch.Tensor, torch.Tensor]]:
        """Forward-only pass over the given blocks (padded to whole micro-batches); the last stage returns
        (batch, nll, argmax_correct) per micro-batch."""
        mbs = self.micro_batch_size
        padded = np.concatenate([block_ids, np.repeat(block_ids[-1:], (-len(block_ids)) % mbs)])
        reader = parallel_state.get_tensor_model_parallel_rank() == 0

        def batches():
            for start in range(0, len(padded), mbs):
                ids = padded[start:start + mbs]
                yield broadcast_batch(_unmasked_batch(self.dataset, ids) if reader else None)

        results = []
        iterators = [batches() for _ in self.chunks]
        for m in self.chunks:
            m.eval()
        get_forward_backward_func()(
            forward_step_func=partial(self._forward_step, results),
            data_iterator=iterators if len(iterators) > 1 else iterators[0],
            model=self.chunks if len(self.chunks) > 1 else self.chunks[0], num_microbatches=len(padded) // mbs,
            seq_length=self.seq_length, micro_batch_size=mbs, forward_only=True)
        return results


def _unmasked_batch(dataset, block_ids):
    """Host batch of the unmasked samples of these blocks (every non-pad position scored)."""
    samples = [dataset.sample_for_block(int(b)) for b in block_ids]
    return host_batch(samples, range(len(samples)))


def nll_matrix(batch, values: torch.Tensor) -> np.ndarray:
    """Scatter per-position values (flat, sequence-major) back to [batch, seq] (NaN where not scored)."""
    b, s = batch["labels"].shape
    out = np.full(s * b, np.nan, dtype=np.float32)
    out[batch["lm_positions"].cpu().numpy()] = values.float().cpu().numpy()
    return out.reshape(s, b).T


def shard_ranges(num_blocks: int, blocks_per_shard: int) -> list[tuple[int, int]]:
    return [(start, min(start + blocks_per_shard, num_blocks)) for start in range(0, num_blocks, blocks_per_shard)]


def is_writer() -> bool:
    """The rank that writes a replica's shards: last pipeline stage, tensor-parallel rank 0."""
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0)


def shard_dir(output: str) -> Path:
    return Path(output + ".shards")


def _select(results, mining: MiningConfig, is_special: np.ndarray) -> tuple[dict[int, np.ndarray], int]:
    """Mined positions per block of a shard, and how many candidate tokens (real, not special) were scored.
    is_special: the vocabulary's table; specials and padding are never mined."""
    blocks, scored = {}, 0
    for batch, nll, correct in results:
        allowed = candidates(batch["labels"].cpu().numpy(), is_special)
        chosen = select_neglected(nll_matrix(batch, nll), allowed, mining.criterion, mining.threshold,
                                  argmax_correct=nll_matrix(batch, correct) > 0.5,
                                  max_per_block=mining.max_per_block, max_ratio=mining.max_ratio)
        for block_id, positions, row in zip(batch["block_id"].tolist(), chosen, allowed):
            if block_id not in blocks:  # the last micro-batch repeats a block to fill up
                blocks[block_id] = positions
                scored += int(row.sum())
    return blocks, scored


def mine(run, mining: MiningConfig) -> None:
    """Stage 1 over the train split of run.data with the weights of run.checkpoint.load; writes mining.output."""
    from megatron_vega import runtime
    from megatron_vega.data.mlm_dataset import build_mlm_datasets
    from megatron_vega.data.tokenizer import vocabulary
    from megatron_vega.model.build import build_model, transformer_config
    from megatron_vega.training import checkpointing
    _, world = runtime.init_distributed()
    dp = run.parallel.validate(run.model, world)
    runtime.init_model_parallel(run.parallel.tensor_model_parallel_size, run.parallel.pipeline_model_parallel_size,
                                run.parallel.virtual_stages(run.model), seed=run.train.seed)
    tc = transformer_config(run.model, run.parallel, run.train.precision)
    chunks = build_model(run.model, tc)
    checkpointing.load(run.checkpoint.load, chunks, None, None, with_optimizer=False, with_rng=False)
    train_ds = build_mlm_datasets(run.data, vocabulary(run), run.train.seed, unmasked=True)[0]
    block_ids = train_ds.block_ids
    shards = shard_ranges(len(block_ids), mining.blocks_per_shard)
    directory = shard_dir(mining.output)
    directory.mkdir(parents=True, exist_ok=True)
    miner = Miner(chunks, tc, train_ds, run.train.micro_batch_size, run.data.seq_length)
    rule = dict(seq_length=run.data.seq_length, criterion=mining.criterion, threshold=mining.threshold,
                max_per_block=mining.max_per_block, max_ratio=mining.max_ratio)
    start, blocks_done, skipped = time.perf_counter(), 0, 0
    for k in range(parallel_state.get_data_parallel_rank(), len(shards), dp):
        path = directory / f"shard-{k:06d}.nidx"
        if path.exists():  # finished before an interruption
            skipped += 1
            continue
        results = miner.score(block_ids[shards[k][0]:shards[k][1]])
        if is_writer():
            blocks, scored = _select(results, mining, train_ds.vocab.is_special)
            write_index(path, blocks, scored, **rule)
        blocks_done += shards[k][1] - shards[k][0]
    elapsed = time.perf_counter() - start
    dist.barrier()
    if dist.get_rank() == 0:
        index = merge(sorted(directory.glob("shard-*.nidx")), mining.output)
        stats = index.stats()
        hist = stats["histogram"]
        print(f"stage 1: {stats['blocks']} blocks ({skipped} shards already done), {stats['positions']} neglected of "
              f"{stats['scored_tokens']} tokens (specials and padding excluded) = {stats['neglected_fraction']:.2%}; "
              f"{blocks_done * run.data.seq_length * dp / max(elapsed, 1e-9):,.0f} tokens/s", flush=True)
        print("per-block neglected positions (count: blocks): "
              + ", ".join(f"{k}: {int(n)}" for k, n in enumerate(hist) if n), flush=True)
    dist.barrier()  # the index exists for every rank once mine() returns


def mean_nll_on_index(run, index) -> float:
    """Mean NLL of the gold token at the positions of `index` (unmasked input), with run.checkpoint.load's
    weights: the quantity self-evolution should lower (docs/self_evolution.md). One replica, any TP/PP."""
    from megatron_vega import runtime
    from megatron_vega.data.mlm_dataset import build_mlm_datasets
    from megatron_vega.data.tokenizer import vocabulary
    from megatron_vega.model.build import build_model, transformer_config
    from megatron_vega.training import checkpointing
    runtime.init_distributed()
    runtime.init_model_parallel(run.parallel.tensor_model_parallel_size, run.parallel.pipeline_model_parallel_size)
    tc = transformer_config(run.model, run.parallel)
    chunks = build_model(run.model, tc)
    checkpointing.load(run.checkpoint.load, chunks, None, None, with_optimizer=False, with_rng=False)
    train_ds = build_mlm_datasets(run.data, vocabulary(run), run.train.seed, unmasked=True)[0]
    total, count, seen = 0.0, 0, set()
    for batch, nll, _ in Miner(chunks, tc, train_ds, run.train.micro_batch_size,
                               run.data.seq_length).score(np.array(sorted(index), dtype=np.int64)):
        for row, block_id in zip(nll_matrix(batch, nll), batch["block_id"].tolist()):
            if block_id not in seen:  # the last micro-batch repeats a block to fill up
                seen.add(block_id)
                total += float(np.sum(row[index[block_id]]))
                count += len(index[block_id])
    return total / max(count, 1)
