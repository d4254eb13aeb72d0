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
    # A key the file lacks is let through: the schema decides (a valid key the file does not
    # set, such as --layerdrop, is accepted; a misspelt one is refused with a hint).
    return load_hyperpyyaml(text, overrides, overrides_must_match=False)


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


# ----------------------------------------------------------------------------------- schemas
# One schema per kind of YAML: its keys, types and defaults are declared here once, validated
# before any work starts, and an unknown key is refused with the closest valid name (a typo
# would otherwise be dropped silently and its default used).

import difflib  # noqa: E402
from typing import Any, Literal, Optional, Union  # noqa: E402

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator  # noqa: E402

from aode.text import NORMALIZERS  # noqa: E402


class ConfigError(ValueError):
    """A hparams file (or dict) that does not fit its schema."""


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_default=True)


EVAL_BATCH_SIZE = 8
ORIGINAL_NAME = "Pretrained"
Normalizer = Literal[NORMALIZERS]  # type: ignore[valid-type]


class TrainingConfig(Schema):
    """A training YAML (hparams/{whisper,parakeet}_{llrd,lora}.yaml): one expert."""

    seed: int = 0
    domain: Optional[str] = None
    data_folder: Optional[str] = None
    output_folder: str
    prep_folder: Optional[str] = None
    prep_options: dict[str, Any] = {}
    train_csv: str
    valid_csv: str
    test_csv: Optional[str] = None
    extra_test_csvs: dict[str, str] = {}
    family: Optional[str] = None
    model_source: str
    init_from: Optional[str] = None
    pretrained_cache: Optional[str] = None
    lr: float = 1e-5
    llrd_alpha: float = 1.0
    llrd_mode: Literal["paper", "separate", "none"] = "paper"
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.98)
    peak_fraction: float = 0.1
    stlr_ratio: float = 32.0
    max_grad_norm: float = 5.0
    freeze_decoder: bool = False
    label_smoothing: float = 0.0
    lora_rank: int = 0
    lora_alpha: Optional[float] = None
    lora_targets: list[str] = ["q_proj", "v_proj"]
    lora_dropout: float = 0.0
    number_of_epochs: int = 1
    steps_per_epoch: Optional[int] = None
    batch_size: int = 8
    eval_batch_size: int = EVAL_BATCH_SIZE
    grad_accumulation_factor: int = 1
    max_duration: Optional[float] = None
    num_workers: int = 0
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    eval_precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    find_unused_parameters: bool = False
    layerdrop: float = 0.0
    beam_size: int = 1
    max_decode_ratio: float = 1.0
    normalizer: Normalizer = "whisper"
    check_audio: bool = True
    progressbar: bool = True

    @field_validator("batch_size", "number_of_epochs", "grad_accumulation_factor", "beam_size", "eval_batch_size")
    @classmethod
    def _positive(cls, value):
        if value < 1:
            raise ValueError("must be at least 1")
        return value


class MergeConfig(Schema):
    """The averaging recipe's YAML (hparams/aode.yaml)."""

    title: str = "AoDE"
    seed: int = 0
    output_folder: str
    original: str
    original_name: str = ORIGINAL_NAME
    experts: dict[str, str]
    weights: Union[None, list[float], dict[str, float]] = None
    include_original: bool = False
    method: str = "average"
    method_options: dict[str, Any] = {}
    weight_rules: Optional[list[Any]] = None
    test_sets: dict[str, str] = {}
    forgetting_sets: Optional[list[str]] = None
    expert_of_test_set: dict[str, str] = {}
    evaluate_experts: bool = True
    extra_models: dict[str, str] = {}
    merged_name: str = "merged"
    eval_batch_size: int = EVAL_BATCH_SIZE
    beam_size: int = 1
    normalizer: Normalizer = "whisper"
    device: str = "cpu"
    progressbar: bool = True

    @field_validator("experts")
    @classmethod
    def _some_experts(cls, value):
        if not value:
            raise ValueError("name at least one expert folder to merge")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        from aode.merge import available_methods

        if value not in available_methods():
            close = difflib.get_close_matches(value, available_methods(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown merge method {value!r}{hint}; available: {sorted(available_methods())}")
        return value


class MiniPretrainConfig(TrainingConfig):
    """hparams/mini_pretrain.yaml: the miniature's generalist, built and pretrained."""

    corpus_folder: str
    corpus_seed: int = 0
    corpus_scale: float = 1.0
    ship_to: Optional[str] = None
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    subsampling_factor: int = 2
    conv_kernel_size: int = 15
    train_csv: str = ""
    valid_csv: str = ""
    model_source: str = ""


def validate(schema, hparams, where="hparams"):
    """``hparams`` checked against ``schema``; returns a plain dict with every default filled.

    Raises :class:`ConfigError` naming ``where``, each unknown key with the closest valid name,
    and each wrong value, before any work starts.
    """
    fields = list(schema.model_fields)
    unknown = [key for key in hparams if key not in schema.model_fields]
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
        problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    known = {k: v for k, v in hparams.items() if k in schema.model_fields}
    try:
        values = schema(**known)
    except ValidationError as err:
        for error in err.errors():
            location = ".".join(str(part) for part in error["loc"])
            problems.append(f"{location}: {error['msg']}" + (
                f" (got {error['input']!r})" if error["type"] != "missing" else ""))
        values = None
    if problems:
        raise ConfigError(f"{where} does not fit the {schema.__name__} schema:\n  " + "\n  ".join(problems))
    return {key: getattr(values, key) for key in fields}
