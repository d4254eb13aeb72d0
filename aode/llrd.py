"""Layer-wise learning-rate decay as optimizer parameter groups (paper III-A).

The paper's rule (``mode="paper"``): encoder layer ``i`` of ``N`` (0 = lowest) gets
``lr * alpha ** (N - 1 - i)``, so the top layer gets the base rate; every parameter that
is not in an encoder layer (decoder, output layer, embeddings, convolutional front end,
...) gets the lowest encoder layer's rate ``lr * alpha ** (N - 1)``.

``mode="separate"``: encoder and decoder get their own chains; parameters under the
decoder that are not in a decoder layer (token and position embeddings, final norm)
take the lowest decoder layer's rate, everything else outside the encoder layers takes
the lowest encoder layer's rate. For CTC models (no decoder) both modes coincide.

Each group carries ``lr_scale`` (its multiple of the base rate) and ``initial_lr``;
the STLR schedule multiplies ``initial_lr`` so the ratios hold for the whole run.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from torch import nn

ENCODER_LAYER = re.compile(r"(?:^|\.)encoder\.layers?\.(\d+)\.")
DECODER_LAYER = re.compile(r"(?:^|\.)decoder\.layers?\.(\d+)\.")
DECODER_PART = re.compile(r"(?:^|\.)decoder\.")
MODES = ("paper", "separate", "none")


def _count_layers(names, pattern):
    ids = {int(m.group(1)) for n in names if (m := pattern.search(n))}
    return max(ids) + 1 if ids else 0


def lr_scales(names: Iterable[str], alpha: float, mode: str = "paper") -> dict[str, tuple[str, float]]:
    """``{parameter name: (group name, lr scale)}`` by the LLRD rule of ``mode``."""
    if mode not in MODES:
        raise ValueError(f"unknown LLRD mode {mode!r}; choose one of {MODES}")
    names = list(names)
    n_enc = _count_layers(names, ENCODER_LAYER)
    n_dec = _count_layers(names, DECODER_LAYER)
    if mode != "none" and n_enc == 0:
        raise ValueError("LLRD found no encoder layers ('encoder.layers.<i>.' in parameter names)")
    result = {}
    for name in names:
        if mode == "none":
            result[name] = ("all", 1.0)
            continue
        enc = ENCODER_LAYER.search(name)
        dec = DECODER_LAYER.search(name)
        if enc:
            i = int(enc.group(1))
            result[name] = (f"encoder.layer{i}", alpha ** (n_enc - 1 - i))
        elif mode == "separate" and dec:
            j = int(dec.group(1))
            result[name] = (f"decoder.layer{j}", alpha ** (n_dec - 1 - j))
        elif mode == "separate" and n_dec and DECODER_PART.search(name):
            result[name] = ("decoder.other", alpha ** (n_dec - 1))
        else:
            result[name] = ("other", alpha ** (n_enc - 1))
    return result


def llrd_param_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    alpha: float = 1.0,
    mode: str = "paper",
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups implementing LLRD (only parameters that require grad).

    Biases and normalisation weights (every parameter with at most one dimension) get no
    weight decay, as in timm's ``param_groups_layer_decay``: with ``weight_decay`` above 0 each
    layer's group is split into ``<group>`` and ``<group>.no_decay``, both at the layer's rate.
    Returns a list of dicts with ``params``, ``lr``, ``initial_lr``, ``lr_scale``, ``name``
    and ``weight_decay``, ordered from the lowest rate up.
    """
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters")
    scales = lr_scales([n for n, _ in named], alpha, mode)
    grouped = collections.OrderedDict()
    for name, param in named:
        group, scale = scales[name]
        decays = weight_decay > 0 and param.ndim > 1
        if weight_decay > 0 and not decays:
            group += ".no_decay"
        grouped.setdefault((group, scale, decays), []).append(param)
    groups = [
        {
            "params": params,
            "name": group,
            "lr_scale": scale,
            "lr": lr * scale,
            "initial_lr": lr * scale,
            "weight_decay": weight_decay if decays else 0.0,
        }
        for (group, scale, decays), params in grouped.items()
    ]
    return sorted(groups, key=lambda g: (g["lr_scale"], g["name"]))
