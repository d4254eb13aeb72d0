"""LoRA experts (paper III-B): low-rank adapters on Linear and (depthwise) Conv1d layers.

The adapted weight is ``W + (alpha / rank) * B @ A``, with ``A`` (rank x fan_in) and ``B``
(out x rank); for a convolution ``fan_in`` is ``in_channels / groups * kernel`` and the
product is reshaped to the weight's shape, so Parakeet's depthwise convolutions (groups =
channels, weight C x 1 x K) get a rank-r update of their C x K kernel matrix. Tensor names
and shapes follow peft (``<module>.lora_A.weight`` / ``<module>.lora_B.weight``, conv A as
r x in/groups x K, conv B as out x r x 1), so a peft adapter file merges with
:func:`lora_delta` too.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


def lora_delta(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float, weight_shape: Sequence[int]) -> torch.Tensor:
    """The weight update ``scaling * B @ A`` reshaped to ``weight_shape`` (float32)."""
    a = lora_A.float().flatten(1)
    b = lora_B.float().flatten(1)
    return (scaling * (b @ a)).reshape(weight_shape)


class LoRAWrapper(nn.Module):
    """Wraps a Linear or Conv1d; adds ``scaling * B @ A`` to its weight on the fly."""

    def __init__(self, base, rank, alpha, dropout=0.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.Conv1d)):
            raise TypeError(f"LoRA supports Linear and Conv1d, not {type(base).__name__}")
        self.base = base
        self.rank = rank
        self.scaling = alpha / rank
        fan_in = base.weight[0].numel()
        out = base.weight.shape[0]
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in))
        self.lora_B = nn.Parameter(torch.zeros(out, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    def delta(self) -> torch.Tensor:
        return lora_delta(self.lora_A, self.lora_B, self.scaling, self.base.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scaling * B(A(dropout(x)))``: the full adapted weight is never built for
        a Linear or an ordinary Conv1d (at 1.1B parameters that costs gigabytes a step); a
        depthwise or grouped convolution adds the C x K delta to its small kernel instead."""
        base = self.base
        if isinstance(base, nn.Linear):
            a = self.lora_A.to(x.dtype)
            b = self.lora_B.to(x.dtype)
            return base(x) + self.scaling * nn.functional.linear(nn.functional.linear(self.dropout(x), a), b)
        if base.groups == 1 and base.padding_mode == "zeros":
            a = self.lora_A.reshape(self.rank, *base.weight.shape[1:]).to(x.dtype)
            b = self.lora_B.unsqueeze(-1).to(x.dtype)
            low = nn.functional.conv1d(self.dropout(x), a, None, base.stride, base.padding, base.dilation)
            return base(x) + self.scaling * nn.functional.conv1d(low, b)
        weight = base.weight + self.delta().to(base.weight.dtype)
        return base._conv_forward(self.dropout(x), weight, base.bias)

    def merged(self) -> nn.Linear | nn.Conv1d:
        """The base module with the update folded into its weight."""
        with torch.no_grad():
            self.base.weight.add_(self.delta().to(self.base.weight.dtype))
        self.base.weight.requires_grad_(True)
        if self.base.bias is not None:
            self.base.bias.requires_grad_(True)
        return self.base


def _matches(name, patterns):
    return any(fnmatch.fnmatch(name, p) or name.split(".")[-1] == p for p in patterns)


def add_lora(
    model: nn.Module,
    rank: int = 16,
    alpha: float | None = None,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    dropout: float = 0.0,
) -> list[str]:
    """Freeze ``model`` and wrap every Linear/Conv1d whose name matches ``target_modules``.

    ``target_modules`` entries are either a module's last name component ("q_proj",
    "depthwise_conv") or an fnmatch pattern over the full name ("encoder.layers.*.fc1").
    ``alpha`` defaults to 2 x rank, as in the paper. Returns the wrapped names.
    """
    alpha = 2 * rank if alpha is None else alpha
    for param in model.parameters():
        param.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if isinstance(module, (nn.Linear, nn.Conv1d)) and _matches(name, target_modules):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRAWrapper(module, rank, alpha, dropout))
            wrapped.append(name)
    if not wrapped:
        raise ValueError(f"no Linear/Conv1d module matches LoRA targets {list(target_modules)}")
    logger.info("LoRA rank %d alpha %s on %d modules", rank, alpha, len(wrapped))
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weight, in place; the model is plain again."""
    count = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRAWrapper):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.merged())
            count += 1
    for param in model.parameters():
        param.requires_grad_(True)
    return count


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRAWrapper) for m in model.modules())


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only, named as peft names them (for an unmerged export)."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRAWrapper):
            a = module.lora_A.detach()
            b = module.lora_B.detach()
            if isinstance(module.base, nn.Conv1d):
                a = a.reshape(module.rank, *module.base.weight.shape[1:])
                b = b.unsqueeze(-1)
            state[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
            state[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
    return state
