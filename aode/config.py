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
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

import speechbrain as sb
from hyperpyyaml import load_hyperpyyaml

if TYPE_CHECKING:
    from speechbrain.utils.run_opts import RunOptions


def _as_dict(overrides):
    import yaml

    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return overrides
    return yaml.safe_load(overrides) or {}


def load_yaml(path: str | os.PathLike, overrides: str | dict[str, Any] | None = None) -> dict[str, Any]:
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


def parse_command_line(
    argv: list[str], defaults: dict[str, Any] | None = None
) -> tuple[dict[str, Any], "RunOptions | dict[str, Any]", str, str | dict[str, Any]]:
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
from typing import Literal  # noqa: E402
from typing import Optional  # noqa: E402
from typing import Union  # noqa: E402

from pydantic import AfterValidator  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from pydantic import ConfigDict  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from pydantic import field_validator  # noqa: E402
from typing_extensions import Annotated  # noqa: E402


def _non_empty(what: str) -> AfterValidator:
    """A field validator: the mapping or list must name at least one ``what``."""

    def check(value):
        if not value:
            raise ValueError(f"name at least one {what}")
        return value

    return AfterValidator(check)


from aode.text import NORMALIZERS  # noqa: E402


class ConfigError(ValueError):
    """A hparams file (or dict) that does not fit its schema."""


def _did_you_mean(name, choices):
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def known_names(names, choices, what, known=None):
    """``names`` unchanged when each is one of ``choices``; else ValueError naming the closest
    (and ``known``, default: the choices)."""
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise ValueError(
            "; ".join(f"unknown {what} {name!r}{_did_you_mean(name, choices)}" for name in unknown)
            + f"; known: {known or list(choices)}"
        )
    return names


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
    # Training and dev rows whose audio cannot be read: above this fraction of a manifest the run stops.
    max_unreadable_fraction: float = 0.01
    # Test rows whose audio cannot be read are an error unless skipped on purpose (then counted).
    skip_unreadable_audio: bool = False
    # Transcript characters a CTC vocabulary lacks (they would become <unk>): above this fraction, stop.
    max_unknown_char_fraction: float = 0.001
    overwrite: bool = False  # a finished or checkpointed run made with other settings is redone, not refused
    progressbar: bool = True
    push_to_hub: Optional[str] = None  # hub repo id: the train recipes (aode.train.main) upload the expert

    @field_validator("batch_size", "number_of_epochs", "grad_accumulation_factor", "beam_size", "eval_batch_size")
    @classmethod
    def _positive(cls, value):
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("max_unreadable_fraction", "max_unknown_char_fraction")
    @classmethod
    def _fraction(cls, value):
        if not 0.0 <= value <= 1.0:
            raise ValueError("must be a fraction from 0 to 1")
        return value


class MergeConfig(Schema):
    """The averaging recipe's YAML (hparams/aode.yaml)."""

    title: str = "AoDE"
    seed: int = 0
    output_folder: str
    original: str
    original_name: str = ORIGINAL_NAME
    experts: Annotated[dict[str, str], _non_empty("expert folder to merge")]
    weights: Union[None, list[float], dict[str, float]] = None
    include_original: bool = False
    method: str = "average"
    method_options: dict[str, Any] = {}
    weight_rules: Optional[list[Any]] = None
    mergekit_config: Optional[str] = None  # a mergekit YAML: replaces the merge keys above
    member_data: dict[str, str] = {}
    dev_sets: dict[str, str] = {}
    statistics_utterances: int = 200
    statistics_batch_size: int = 8
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
    skip_unreadable_audio: bool = False  # test rows whose audio cannot be read: an error unless skipped (counted)
    allow_foreign_original: bool = False  # merge with an original that is not the experts' recorded base model
    overwrite: bool = False  # a finished merge or statistics made from other inputs is redone, not refused
    progressbar: bool = True
    push_to_hub: Optional[str] = None  # a hub repo id: upload the merged folder (aode.model_card.push_to_hub)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        from aode.merge import available_methods

        return known_names([value], available_methods(), "merge method")[0]

    @field_validator("member_data")
    @classmethod
    def _member_data_named(cls, value, info):
        names = [*(info.data.get("experts") or {}), info.data.get("original_name", ORIGINAL_NAME), "original"]
        known_names(list(value), names, "member_data entry (an expert's name, or original)")
        return value

    @field_validator("statistics_utterances", "statistics_batch_size")
    @classmethod
    def _positive(cls, value):
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("forgetting_sets")
    @classmethod
    def _forgetting_sets_named(cls, value, info):
        from aode.report import default_forgetting_sets

        test_sets = list(info.data.get("test_sets") or {})
        if not test_sets:
            return value
        chosen = default_forgetting_sets(test_sets) if value is None else value
        missing = [s for s in chosen if s not in test_sets]
        if missing or not chosen:
            raise ValueError(
                f"forgetting_sets {chosen} must name one or more of test_sets {test_sets} (the generalist's "
                "own domain, e.g. LibriSpeech test-clean and test-other; by default the sets whose names "
                "contain 'clean' or 'other')"
            )
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


def validate(schema: type[Schema], hparams: Mapping[str, Any], where: str = "hparams") -> dict[str, Any]:
    """``hparams`` checked against ``schema``; returns a plain dict with every default filled.

    Raises :class:`ConfigError` naming ``where``, each unknown key with the closest valid name,
    and each wrong value, before any work starts.
    """
    fields = list(schema.model_fields)
    unknown = [key for key in hparams if key not in schema.model_fields]
    problems = []
    for key in unknown:
        problems.append(f"unknown key {key!r}{_did_you_mean(key, fields)}")
    known = {k: v for k, v in hparams.items() if k in schema.model_fields}
    try:
        values = schema(**known)
    except ValidationError as err:
        for error in err.errors():
            location = ".".join(str(part) for part in error["loc"])
            problems.append(
                f"{location}: {error['msg']}" + (f" (got {error['input']!r})" if error["type"] != "missing" else "")
            )
        values = None
    if problems:
        raise ConfigError(f"{where} does not fit the {schema.__name__} schema:\n  " + "\n  ".join(problems))
    return {key: getattr(values, key) for key in fields}


# ------------------------------------------------------------ experiment (recipes/average/reproduce.py)

import importlib  # noqa: E402

from pydantic import Field  # noqa: E402
from pydantic import model_validator  # noqa: E402


class DomainConfig(Schema):
    """One target domain of an experiment: its manifests and, optionally, its data prep."""

    train_csv: str
    valid_csv: str
    test_csv: str
    prepare: Optional[str] = None  # dotted name of a data_prep function, run when data_folder is set
    data_folder: Optional[str] = None
    prep_folder: Optional[str] = None
    prep_options: dict[str, Any] = {}


class SyntheticCorpusConfig(Schema):
    """The miniature's corpus (aode.mini.corpus.generate_corpus), generated when missing."""

    folder: Optional[str] = None  # default: the experiment's corpus_folder
    seed: int = 0
    scale: float = 1.0
    config: Optional[dict[str, Any]] = None


class MergeMethodConfig(Schema):
    """One row of an experiment's merge-methods table: a registered method over the experts."""

    method: str
    options: dict[str, Any] = {}
    include_original: bool = False
    weights: Union[None, list[float], dict[str, float]] = None
    weight_rules: Optional[list[Any]] = None

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        return MergeConfig._known_method(value)


class WeightSearchConfig(Schema):
    """aode.search.search_weights on the dev sets (the experiment's ``weight_search``)."""

    method: str = "average"
    objective: Literal["average", "constrained"] = "average"
    max_forgetting: Union[None, int, float] = None  # an int stays one: it is part of the row's label
    n_random: int = 8

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        return MergeConfig._known_method(value)


class LauncherConfig(Schema):
    """How an experiment runs the independent trainings of a stage (the experts; the LoRA experts;
    each iteration's fine-tunes): ``serial`` in this process (the default), ``local``: ``jobs``
    processes at a time on this machine (each pinned to its own GPU when there are GPUs), or
    ``slurm``: a job array through submitit (``pip install aode[cluster]``). aode.launcher."""

    kind: Literal["serial", "local", "slurm"] = "serial"
    jobs: Optional[int] = None  # at a time; local: default one per GPU (2 without GPUs); slurm: default all
    partition: Optional[str] = None  # slurm: required
    gpus_per_job: int = 1  # a job trains in one process: 1 (a GPU each), or 0 (CPU only)
    cpus_per_job: Optional[int] = None  # slurm: --cpus-per-task, and the job's torch threads
    timeout_min: int = 24 * 60  # slurm: the job's time limit
    slurm_additional_parameters: dict[str, Any] = {}  # any other sbatch option: {mem: 64G, account: x}
    folder: Optional[str] = None  # logs and submitit's files; default <output_folder>/jobs

    @field_validator("jobs", "cpus_per_job", "timeout_min")
    @classmethod
    def _positive(cls, value):
        if value is not None and value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("gpus_per_job")
    @classmethod
    def _one_process(cls, value):
        if value not in (0, 1):
            raise ValueError(
                "a launched job trains in one process: 1 GPU (or 0); to train one expert on several GPUs, "
                "run its recipe under torchrun (README, multi-GPU)"
            )
        return value

    @model_validator(mode="after")
    def _slurm_ready(self):
        if self.kind != "slurm":
            return self
        if not self.partition:
            raise ValueError('the slurm launcher needs a partition: --launcher "{kind: slurm, partition: NAME}"')
        try:
            importlib.import_module("submitit")
        except ImportError:
            raise ValueError(
                "the slurm launcher needs submitit: pip install submitit (or pip install -e .[cluster])"
            ) from None
        return self


class ExperimentConfig(Schema):
    """An experiment YAML (hparams/mini.yaml, hparams/mini_full.yaml): every scenario of the
    paper through aode.experiment (recipes/average/reproduce.py)."""

    title: str = "AoDE"
    seed: int = 0
    output_folder: str
    corpus_folder: Optional[str] = None
    synthetic_corpus: Optional[SyntheticCorpusConfig] = None
    original: str
    original_name: str = ORIGINAL_NAME
    domains: Annotated[dict[str, DomainConfig], _non_empty("domain")]
    forgetting_sets: dict[str, str]
    forgetting_dev_sets: dict[str, str] = {}  # the original domain's dev sets: weight search, greedy soup
    scenarios: list[str] = ["experts", "aode", "aode_with_original"]  # ids of aode.experiment.SCENARIOS
    sequential_orders: list[list[str]] = []
    iterations: int = 3
    merge_methods: dict[str, MergeMethodConfig] = {}
    fisher_utterances: int = 200  # per member, for every statistics file (Fisher, Gram)
    general_data: Optional[str] = None  # general-domain data for the original's statistics
    weight_search: WeightSearchConfig = Field(default_factory=WeightSearchConfig)
    train_hparams_file: str
    train_overrides: dict[str, Any] = {}  # keys of TrainingConfig
    lora_hparams_file: Optional[str] = None
    lora_overrides: dict[str, Any] = {}  # keys of TrainingConfig
    eval_batch_size: int = EVAL_BATCH_SIZE
    normalizer: Normalizer = "whisper"
    device: str = "cpu"
    skip_unreadable_audio: bool = False  # test rows whose audio cannot be read: an error unless skipped (counted)
    overwrite: bool = False  # a finished stage made from other inputs is redone, not refused
    progressbar: bool = True
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)  # or its kind alone: --launcher local
    jobs: Optional[int] = None  # shortcut for launcher.jobs: --launcher local --jobs 2

    @field_validator("launcher", mode="before")
    @classmethod
    def _launcher_kind(cls, value):
        if value is None:
            return {}
        return {"kind": value} if isinstance(value, str) else value

    @field_validator(
        "forgetting_dev_sets",
        "sequential_orders",
        "merge_methods",
        "weight_search",
        "train_overrides",
        "lora_overrides",
        mode="before",
    )
    @classmethod
    def _null_is_empty(cls, value, info):
        return cls.model_fields[info.field_name].get_default(call_default_factory=True) if value is None else value

    @field_validator("scenarios")
    @classmethod
    def _known_scenarios(cls, value):
        from aode.experiment import SCENARIO_IDS

        return known_names(value, SCENARIO_IDS, "scenario")

    @field_validator("train_overrides", "lora_overrides")
    @classmethod
    def _training_keys(cls, value):
        known_names(list(value), TrainingConfig.model_fields, "training key", known="the keys of TrainingConfig")
        return value

    @field_validator("iterations", "eval_batch_size", "fisher_utterances")
    @classmethod
    def _positive(cls, value):
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        for order in self.sequential_orders:
            if not order:
                raise ValueError("sequential_orders: an order names at least one domain")
            known_names(order, self.domains, "domain in sequential_orders")
        if "weight_search" in self.scenarios and not self.forgetting_dev_sets:
            raise ValueError("weight_search needs forgetting_dev_sets (dev sets of the original domain)")
        if "lora" in self.scenarios and not self.lora_hparams_file:
            raise ValueError("lora needs lora_hparams_file")
        if self.synthetic_corpus is not None and self.synthetic_corpus.folder is None:
            if self.corpus_folder is None:
                raise ValueError("synthetic_corpus needs a folder (or corpus_folder)")
            self.synthetic_corpus.folder = self.corpus_folder
        if self.jobs is not None:
            if self.launcher.kind == "serial":
                raise ValueError("jobs needs a parallel launcher: --launcher local --jobs N (or slurm)")
            if self.launcher.jobs not in (None, self.jobs):
                raise ValueError(f"jobs {self.jobs} and launcher.jobs {self.launcher.jobs} differ: give one")
            self.launcher.jobs = self.jobs
        return self
