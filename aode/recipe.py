"""The corpus recipes' entry point (``recipes/<Corpus>/train.py``): one call each.

It sits above both :mod:`aode.cli` (``--help``, the error rule) and :mod:`aode.train` (the
training), so that neither of those imports the other's layer back; ``--help`` is answered
before :mod:`aode.train` (torch, SpeechBrain, transformers) is imported.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from aode.cli import HELP_FLAGS
from aode.cli import answer_help
from aode.cli import as_yaml

__all__ = ["corpus_recipe"]


def corpus_recipe(prepare: str, corpus: str, description: str | None = None, argv: Sequence[str] | None = None):
    """A corpus recipe (``recipes/<Corpus>/train.py``): ``--help`` answered first (the training
    keys and the keyword options of ``prepare``, the corpus's ``"module:function"``), then
    :func:`aode.train.main` with that preparation; returns the expert's folder."""
    import importlib

    module, _, name = prepare.partition(":")
    if any(arg in HELP_FLAGS for arg in (sys.argv[1:] if argv is None else argv)):
        function = getattr(importlib.import_module(module), name)
        description = (description or "") + "\n\n" + _prep_options_text(function)
    answer_help(argv, "TrainingConfig", description=description)
    from aode.train import main

    return main(
        None if argv is None else list(argv), prepare=getattr(importlib.import_module(module), name), corpus=corpus
    )


def _prep_options_text(function) -> str:
    """The ``prep_options`` keys of a preparation: its keyword arguments with their defaults."""
    import inspect

    options = [
        f"{p.name} ({as_yaml(p.default)})"
        for p in inspect.signature(function).parameters.values()
        if p.name not in ("data_folder", "save_folder") and p.default is not inspect.Parameter.empty
    ]
    return (
        f"prep_options keys ({function.__module__}.{function.__name__}, run with --data_folder): "
        + ", ".join(options)
        + "."
    )
