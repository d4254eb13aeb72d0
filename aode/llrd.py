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

Which layer a parameter is in is the model's to say (:meth:`aode.models.ASRModel.layer_of`,
as timm models supply their own group matcher): :func:`model_param_groups` asks the model;
bare parameter names (:func:`lr_scales`, :func:`llrd_param_groups` without ``layer_of``)
are read by the transformers convention (:func:`aode.models.transformer_layer`).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from torch import nn

    from aode.models import ASRModel
    from aode.models import Layer

MODES = ("paper", "separate", "none")


def _count_layers(layers: Iterable[Layer | None], stack: str) -> int:
    ids = {layer[1] for layer in layers if layer is not None and layer[0] == stack and layer[1] is not None}
    return max(ids) + 1 if ids else 0


def lr_scales(
    names: Iterable[str], alpha: float, mode: str = "paper", layer_of: Callable[[str], Layer | None] | None = None
) -> dict[str, tuple[str, float]]:
    """``{parameter name: (group name, lr scale)}`` by the LLRD rule of ``mode``; ``layer_of``
    places a name in its layer (:meth:`aode.models.ASRModel.layer_of`; default: the
    transformers naming convention)."""
    if mode not in MODES:
        raise ValueError(f"unknown LLRD mode {mode!r}; choose one of {MODES}")
    if layer_of is None:
        from aode.models import transformer_layer

        layer_of = transformer_layer
    names = list(names)
    layers = {name: layer_of(name) for name in names} if mode != "none" else {}
    n_enc = _count_layers(layers.values(), "encoder")
    n_dec = _count_layers(layers.values(), "decoder")
    if mode != "none" and n_enc == 0:
        raise ValueError("LLRD found no encoder layers (no parameter that layer_of puts in one: 'encoder.layers.<i>.')")
    result = {}
    for name in names:
        if mode == "none":
            result[name] = ("all", 1.0)
            continue
        stack, index = layers[name] or (None, None)
        if stack == "encoder" and index is not None:
            result[name] = (f"encoder.layer{index}", alpha ** (n_enc - 1 - index))
        elif mode == "separate" and stack == "decoder" and index is not None:
            result[name] = (f"decoder.layer{index}", alpha ** (n_dec - 1 - index))
        elif mode == "separate" and n_dec and stack == "decoder":
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
    layer_of: Callable[[str], Layer | None] | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups implementing LLRD (only parameters that require grad);
    ``layer_of`` as in :func:`lr_scales`.

    Biases and normalisation weights (every parameter with at most one dimension) get no
    weight decay, as in timm's ``param_groups_layer_decay``: with ``weight_decay`` above 0 each
    layer's group is split into ``<group>`` and ``<group>.no_decay``, both at the layer's rate.
    Returns a list of dicts with ``params``, ``lr``, ``initial_lr``, ``lr_scale``, ``name``
    and ``weight_decay``, ordered from the lowest rate up.
    """
    named = [(n, p) for n, p in named_parameters if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters")
    scales = lr_scales([n for n, _ in named], alpha, mode, layer_of)
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


def model_param_groups(
    asr: ASRModel, lr: float, alpha: float = 1.0, mode: str = "paper", weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """:func:`llrd_param_groups` of every parameter of ``asr``, each placed in its layer by the
    model itself (:meth:`~aode.models.ASRModel.layer_of` of its name in ``hf_model``; a
    parameter outside ``hf_model`` is in no layer)."""
    hf_names = asr.hf_names()

    def layer_of(name: str) -> Layer | None:
        return asr.layer_of(hf_names[name]) if name in hf_names else None

    return llrd_param_groups(asr.named_parameters(), lr, alpha, mode, weight_decay, layer_of)
