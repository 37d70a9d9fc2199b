"""What an attention core supports, stated as data so that the selection (``select_core``) and the tests read it."""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CoreSupport:
    """``device_types``: torch device types it runs on; ``dtypes``: input dtypes it accepts; the rest: whether it
    takes a per-sample relative index [b, s, s], a per-sample additive mask [b, 1, s, t], deep-prompt prefix
    keys/values, and attention dropout."""
    device_types: frozenset[str]
    dtypes: frozenset[torch.dtype]
    per_sample_positions: bool
    masks: bool
    prefix: bool
    dropout: bool

    def runs(self, device: torch.device, dtype: torch.dtype) -> bool:
        return device.type in self.device_types and dtype in self.dtypes
