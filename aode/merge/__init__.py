"""Model merging (paper III-C): Average of Domain Experts and the alternatives.

One file per method behind a small registry (:mod:`aode.merge.registry`); a streaming
driver (:func:`merge_models`) that merges model folders tensor by tensor; a streaming
reader of model folders (:mod:`aode.merge.read`), a streaming safetensors writer
(:mod:`aode.merge.write`) and the checks between members (:mod:`aode.merge.checks`).

Methods: ``average`` (AoDE), ``most_extreme`` / ``least_extreme`` (Table IV),
``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``breadcrumbs``,
``breadcrumbs_ties``, ``slerp``, ``model_stock``; subspace merges ``tsv``, ``iso_c``,
``iso_cts``; data-aware merges ``fisher``, ``regmean`` (per-member statistics files), ``regmean_pp`` (Grams through the
merged layers, computed as it merges) and
``adamerging`` (coefficients learnt on dev sets; :mod:`aode.merge.inputs` prepares their data).
Every method module is imported here (:func:`aode.merge.registry.load_methods`): a new method is
one file.
"""

from .registry import available_methods, get_method, get_spec, load_methods, register  # noqa: I001
from .driver import MergeError, MergePlan, MergeRun, merge_models, tensor_seed
from .averager import as_averager
from aode.fisher_file import save_fisher
from aode.config import provide_merge_methods
from .checks import check_method_options

__all__ = [
    "merge_models",
    "as_averager",
    "MergePlan",
    "MergeRun",
    "MergeError",
    "register",
    "get_method",
    "get_spec",
    "available_methods",
    "save_fisher",
    "tensor_seed",
]

load_methods()
# the schemas check method names and options through the registry (aode.config imports nothing above it)
provide_merge_methods(available_methods, check_method_options)
