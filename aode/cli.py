"""The one entry point of every AoDE command line: the error rule and ``--help``.

The error rule (:func:`run_main`): a user error (a class named in :data:`USER_ERRORS`: a
hparams key or value, a model that is not there, a data layout, prep options the corpus cannot
meet, members that cannot be merged) ends the command with ONE line on stderr, ``error: ...``,
and exit status 2; the checks that raise them run before any work, so nothing is half written.
Any other exception is a bug and keeps its traceback. ``AODE_DEBUG=1`` in the environment
prints the traceback of a user error too.

``--help`` (:func:`answer_help`): the recipes call it before importing torch, SpeechBrain or
transformers; it prints the keys of the recipe's YAML kind from its schema in
:mod:`aode.config` (type, default, description: declared once there), then SpeechBrain's run
options, and exits.
"""

from __future__ import annotations

import os
import sys
import textwrap
import traceback
import typing
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

__all__ = [
    "USER_ERRORS",
    "DEBUG_ENV",
    "run_main",
    "print_error",
    "user_error_status",
    "answer_help",
    "help_text",
]

DEBUG_ENV = "AODE_DEBUG"

# Exceptions that are the user's to fix, by "module.Class" (a subclass counts: every
# aode.config.ConfigError, e.g. ModelNotFoundError, StaleOutputError), with the exit status.
# Named, not imported, so that this module stays light; a class can only be raised once its
# module is loaded, so it is looked up in sys.modules.
USER_ERRORS = {
    "aode.config.ConfigError": 2,
    "data_prep.common.LayoutError": 2,
    "data_prep.common.PrepOptionsError": 2,
    "aode.merge.checks.MergeError": 2,
    "aode.merge.mergekit_config.MergekitConfigError": 2,
    # Not the user's input, but a reported failure, not a bug: a training job that failed
    # (its log is named); one line too, exit status 1.
    "aode.launcher.LaunchError": 1,
}


def user_error_status(error: BaseException) -> int | None:
    """The exit status of ``error`` when it is one of :data:`USER_ERRORS` (or a subclass of
    one), else None."""
    for name, status in USER_ERRORS.items():
        module_name, _, class_name = name.rpartition(".")
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(error, cls):
            return status
    return None


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines) or type(error).__name__


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def run_main(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> Any:
    """``main(argv)`` under the error rule (module docstring); returns what it returns.

    A user error prints ``error: <its message on one line>`` to stderr (after its traceback
    with ``AODE_DEBUG=1``) and raises ``SystemExit`` with its status (2; 1 for a failed job).
    ``argv`` defaults to ``sys.argv[1:]``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return main(argv)
    except Exception as error:  # noqa: BLE001 (only the user errors are answered here)
        status = user_error_status(error)
        if status is None:
            raise
        print_error(error)
        raise SystemExit(status) from None


def print_error(error: BaseException) -> None:
    """``error: <message on one line>`` on stderr, after the traceback with ``AODE_DEBUG=1``
    (the data_prep command lines use it too)."""
    if _debug():
        traceback.print_exception(error)
    print(f"error: {_one_line(error)}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------- --help

HELP_FLAGS = ("-h", "--help")
WIDTH = 100


def answer_help(
    argv: Sequence[str] | None, schema: str, prog: str | None = None, description: str | None = None
) -> None:
    """When ``argv`` asks for help (``-h``/``--help``), print :func:`help_text` and exit 0;
    otherwise return at once. Call it before the heavy imports: it imports only
    :mod:`aode.config`'s schemas."""
    argv = sys.argv[1:] if argv is None else argv
    if not any(arg in HELP_FLAGS for arg in argv):
        return
    print(help_text(schema, prog, description), end="")
    sys.stdout.flush()
    raise SystemExit(0)


def help_text(schema: str, prog: str | None = None, description: str | None = None) -> str:
    """The help of a recipe whose YAML kind is ``schema`` (a class name in :mod:`aode.config`:
    TrainingConfig, MiniPretrainConfig, MergeConfig, ExperimentConfig)."""
    import aode.config

    cls = getattr(aode.config, schema)
    prog = prog or f"python {os.path.relpath(sys.argv[0]) if sys.argv and sys.argv[0] else 'recipe.py'}"
    out = [f"usage: {prog} HPARAMS.yaml [--KEY VALUE ...] [SpeechBrain run options]\n"]
    if description:
        out.append("\n" + _description(description) + "\n")
    out.append(
        "\n"
        + _paragraph(
            f"Keys of the hparams file ({cls.__name__}, aode/config.py). Any of them can be given on the command "
            "line as --KEY VALUE (YAML syntax), which replaces the file's value (a mapping replaces the file's "
            "mapping as a whole); a key the file does not set takes its default. The hparams are checked before "
            "any work: an unknown key or a wrong value ends the run with one line, error: ..., and exit status 2 "
            f"({DEBUG_ENV}=1 adds the traceback)."
        )
        + "\n\n"
    )
    nested = []
    out.append(_keys(cls, nested))
    seen = {cls}
    while nested:
        where, sub = nested.pop(0)
        if sub in seen:
            continue
        seen.add(sub)
        doc = " ".join((sub.__doc__ or "").replace("``", "").split())
        out.append("\n" + _paragraph(f"Keys of {where} ({sub.__name__}): {doc}") + "\n")
        out.append(_keys(sub, nested))
    out.append("\n" + _speechbrain_section())
    return "".join(out)


def _description(text: str) -> str:
    """A module docstring for the help: paragraphs filled, indented lines (commands) kept."""
    import re

    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text).replace("``", "")  # reST roles and literals
    blocks = []
    for block in textwrap.dedent(text).strip().split("\n\n"):
        lines = block.splitlines()
        if all(line.startswith(" ") for line in lines):
            blocks.append(block)
        else:
            blocks.append(_paragraph(block))
    return "\n\n".join(blocks)


def _paragraph(text: str, indent: str = "") -> str:
    text = " ".join(text.split())
    return textwrap.fill(text, WIDTH, initial_indent=indent, subsequent_indent=indent)


def _keys(cls, nested: list) -> str:
    """One entry per field of ``cls``: ``name: type = default`` and its description."""
    lines = []
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        for sub in _schemas_in(annotation):
            nested.append((f"each {name} entry" if typing.get_origin(annotation) is dict else name, sub))
        if field.is_required():
            default = " (required)"
        elif field.default_factory is not None:
            default = " = (the defaults below)" if _schemas_in(annotation) else f" = {as_yaml(field.default_factory())}"
        else:
            default = f" = {as_yaml(field.default)}"
        lines.append(f"  {name}: {_type_name(annotation)}{default}")
        if field.description:
            lines.append(_paragraph(field.description, " " * 6))
    return "\n".join(lines) + "\n"


def _schemas_in(annotation) -> list:
    from aode.config import Schema

    if isinstance(annotation, type) and issubclass(annotation, Schema):
        return [annotation]
    return [s for arg in typing.get_args(annotation) for s in _schemas_in(arg)]


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is typing.Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is dict:
        return f"mapping of {_type_name(args[1])}" if args and args[1] is not Any else "mapping"
    if origin is list:
        return f"list of {_type_name(args[0])}" if args and args[0] is not Any else "list"
    if origin is tuple:
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    return getattr(annotation, "__name__", str(annotation))


def as_yaml(value) -> str:
    """``value`` as it would be written in a hparams file."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {as_yaml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(as_yaml(v) for v in value) + "]"
    if hasattr(value, "model_dump"):
        return as_yaml(value.model_dump())
    return str(value)


# ------------------------------------------------------------------- SpeechBrain's run options


def _speechbrain_parser():
    """SpeechBrain's argument parser, without importing SpeechBrain (which imports torch):
    ``speechbrain/utils/run_opts.py`` (SpeechBrain 1.1) needs the standard library only, so
    it is loaded from its file. Older SpeechBrain builds the parser inside
    ``speechbrain.core.parse_arguments``: then SpeechBrain is imported (slower) and the parser
    caught when that function parses."""
    import argparse
    import importlib.util

    spec = importlib.util.find_spec("speechbrain")
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(location, "utils", "run_opts.py")
        if os.path.isfile(path):
            name = "_aode_speechbrain_run_opts"
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module  # dataclasses look their module up there
            try:
                module_spec.loader.exec_module(module)
                return module.RunOptions._create_parser()
            finally:
                sys.modules.pop(name, None)

    class Caught(Exception):
        pass

    def catch(parser, *args, **kwargs):
        raise Caught(parser)

    import speechbrain.core

    parse = argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_known_args = catch
    try:
        speechbrain.core.parse_arguments(["hparams.yaml"])
    except Caught as caught:
        return caught.args[0]
    finally:
        argparse.ArgumentParser.parse_known_args = parse
    return None


# Run options that the training YAMLs set too: given on the command line, they win.
RUN_OPTIONS_IN_HPARAMS = (
    "precision",
    "eval_precision",
    "grad_accumulation_factor",
    "max_grad_norm",
    "find_unused_parameters",
)


def _speechbrain_section() -> str:
    import argparse

    head = (
        "SpeechBrain run options (SpeechBrain's own argument parser, sorted; "
        f"{', '.join(RUN_OPTIONS_IN_HPARAMS)} are hparams keys of the training YAMLs too, and the command line "
        "wins over the file):"
    )
    out = [_paragraph(head), ""]
    try:
        parser = _speechbrain_parser()
    except Exception as err:  # noqa: BLE001 (help must answer whatever SpeechBrain's file holds)
        parser, failure = None, err
    else:
        failure = None
    if parser is None:
        out.append(f"  (SpeechBrain's parser could not be read{f': {failure}' if failure else ''})")
        return "\n".join(out) + "\n"
    actions = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "param_file")]
    for action in sorted(actions, key=lambda a: a.option_strings[-1].lstrip("-")):
        flags = ", ".join(action.option_strings)
        if action.nargs == 0:
            entry = flags
        else:
            metavar = action.metavar or action.dest.upper()
            if action.choices:
                metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
            entry = f"{flags} {metavar}" + (" ..." if action.nargs in ("*", "+") else "")
        if action.default not in (None, False, argparse.SUPPRESS):
            entry += f" (default: {action.default})"
        out.append(f"  {entry}")
        if action.help:
            out.append(_paragraph(action.help, " " * 6))
    return "\n".join(out) + "\n"
