"""Self-evolution learning (docs/self_evolution.md): stage 1 mines the tokens the model neglects; stage 2 (the
``self-evolution`` objective, objectives/self_evolution.py) masks exactly those and trains with token-specific
label smoothing (the loss: ``megatron_vega.ops.smoothed_cross_entropy``)."""
from megatron_vega.selfevolution.neglected_index import (
                                                         NeglectedIndex,
                                                         ShardWriter,
                                                         merge,
                                                         select_neglected,
                                                         shard_paths,
                                                         write_index,
)

__all__ = ["NeglectedIndex", "ShardWriter", "merge", "select_neglected", "shard_paths", "write_index"]
