"""Reading hparams files with command-line overrides, the way every AoDE command does.

SpeechBrain's ``--key value`` overrides go through hyperpyyaml, which merges a mapping given on
the command line into the YAML's mapping: ``--experts "{A: a, B: b}"`` would keep every other
expert of the file, and a merge would then fail on folders the user meant to drop. Here a
top-level mapping given on the command line REPLACES the file's mapping (``experts``,
``test_sets``, ``extra_test_csvs``, ``prep_options``, ...); scalars and lists are replaced as
hyperpyyaml always does. ``!ref`` to a replaced key sees the replacement.
"""

import io
import os

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml


def _as_dict(overrides):
    import yaml

    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return overrides
    return yaml.safe_load(overrides) or {}


def load_yaml(path, overrides=None):
    """``path`` loaded by hyperpyyaml with ``overrides`` (a YAML string or a dict); a mapping
    override replaces the file's mapping of the same top-level key."""
    import ruamel.yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"hparams file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    replaced = [key for key, value in _as_dict(overrides).items() if isinstance(value, dict)]
    if replaced:
        round_trip = ruamel.yaml.YAML()  # keeps !ref, !new: and comments as they are
        document = round_trip.load(text)
        for key in replaced:
            if isinstance(document.get(key), dict):
                document[key] = {}
        buffer = io.StringIO()
        round_trip.dump(document, buffer)
        text = buffer.getvalue()
    return load_hyperpyyaml(text, overrides)


def parse_command_line(argv, defaults=None):
    """SpeechBrain-style ``hparams.yaml [--key value ...]``: (hparams, run_opts, file, overrides).

    ``defaults`` are overrides that the command line can still replace (a recipe's corpus name).
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    given = _as_dict(overrides)
    extra = {k: v for k, v in (defaults or {}).items() if k not in given}
    if extra:
        overrides = {**given, **extra}
    return load_yaml(hparams_file, overrides), run_opts, hparams_file, overrides
