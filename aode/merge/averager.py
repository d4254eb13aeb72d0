"""Every registered merge method as a SpeechBrain averager.

``speechbrain.utils.checkpoints.average_checkpoints(checkpoints, "model", averager=...)``
calls its ``averager`` with an iterator over the checkpoints' state dicts and expects one
state dict back. :func:`as_averager` makes that callable from any method of the registry, so a
SpeechBrain user merges their own checkpoints with TIES or Model Stock in one line::

    from speechbrain.utils.checkpoints import average_checkpoints
    from aode.merge import as_averager

    state = average_checkpoints(ckpts, "model", averager=as_averager("ties", base=initial_state, density=0.3))

Tensors are merged as the streaming driver merges them: in float32 and cast back, each with a
generator seeded from ``seed`` and its name, BatchNorm running statistics averaged whatever the
method, integer buffers taken from the first checkpoint. Unlike the driver, all the state dicts
are held in memory (SpeechBrain's interface hands them over whole). Methods that read
per-member statistics files (``fisher``, ``regmean``) need model folders: use
:func:`aode.merge.merge_models` for them.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping

import torch

from .driver import RUNNING_STATISTICS
from .driver import tensor_seed
from .registry import get_spec

StateDict = Mapping[str, torch.Tensor]


def as_averager(
    method: str = "average",
    weights: list[float] | None = None,
    base: StateDict | None = None,
    seed: int = 0,
    **options: object,
) -> Callable[[Iterable[StateDict]], dict[str, torch.Tensor]]:
    """A SpeechBrain ``averager`` that merges state dicts with the registered ``method``.

    ``weights``: one per checkpoint (default all 1); ``base``: the state dict the checkpoints
    were fine-tuned from, for task-vector methods (``ties``, ``dare_*``, ``task_arithmetic``,
    ``model_stock``); ``options``: the method's own (e.g. ``density``). Errors in the method
    name, a missing base or statistics-file methods are raised here, before any checkpoint is
    read.
    """
    spec = get_spec(method)
    if spec.setup is not None or spec.whole_model:
        raise ValueError(
            f"merge method {method!r} reads per-member statistics files or data and needs model folders: "
            "use aode.merge.merge_models"
        )
    if spec.needs_base and base is None:
        raise ValueError(f"merge method {method!r} needs base=<the state dict the checkpoints started from>")
    average = get_spec("average").fn

    def averager(state_dicts: Iterable[StateDict]) -> dict[str, torch.Tensor]:
        members = list(state_dicts)
        if len(members) < spec.min_members or (spec.max_members and len(members) > spec.max_members):
            raise ValueError(f"merge method {method!r} cannot merge {len(members)} checkpoints")
        w = torch.tensor(weights if weights is not None else [1.0] * len(members), dtype=torch.float32)
        if len(w) != len(members):
            raise ValueError(f"{len(w)} weights for {len(members)} checkpoints")
        merged = {}
        for name, first in members[0].items():
            if not first.is_floating_point():
                merged[name] = first.clone()
                continue
            tensors = [m[name].float() for m in members]
            fn = average if name.endswith(RUNNING_STATISTICS) else spec.fn
            kwargs = {} if fn is average else options
            base_tensor = base[name].float() if (spec.uses_base and base is not None) else None
            generator = torch.Generator().manual_seed(tensor_seed(seed, name))
            merged[name] = fn(tensors, w, base_tensor, generator, **kwargs).to(first.dtype)
        return merged

    return averager
