"""Model merging (paper III-C): Average of Domain Experts and the alternatives.

One file per method behind a small registry (:mod:`aode.merge.registry`); a streaming
driver (:func:`merge_models`) that merges model folders tensor by tensor; a streaming
safetensors reader/writer (:mod:`aode.merge.io`).

Methods: ``average`` (AoDE), ``most_extreme`` / ``least_extreme`` (Table IV),
``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``slerp``, ``model_stock``,
``fisher``.
"""

from .registry import available_methods, get_method, get_spec, register  # noqa: I001
from . import linear, extreme, task_arithmetic, ties, dare, slerp, model_stock, fisher  # noqa: F401
from .driver import MergeError, merge_models, tensor_seed
from .fisher import save_fisher

__all__ = [
    "merge_models",
    "MergeError",
    "register",
    "get_method",
    "get_spec",
    "available_methods",
    "save_fisher",
    "tensor_seed",
]
