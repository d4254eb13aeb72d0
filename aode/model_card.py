"""Model cards: the ``README.md`` of an expert's or a merge's model folder, and hub uploads.

A card is what the Hugging Face hub shows for a model repository: YAML front matter (the
metadata the hub indexes) and a Markdown body. The metadata is built with
``huggingface_hub.ModelCardData`` and ``EvalResult`` and parsed back by
``huggingface_hub.ModelCard`` before it is written, so it is the library's own format and a
card that the library could not read is never written:

* ``base_model``: the original model the folder descends from (an expert's
  ``model_source``, a merge's ``base``): its hub id when it is one or a Hugging Face cache
  snapshot of one (``.../models--org--name/snapshots/<sha>``), else the local folder's name
  (the hub links only hub ids). A merge without a base names the members' original, from
  their own ``aode.json``, else the members' folder names;
* ``tags``: ``aode``, ``speechbrain``, ``automatic-speech-recognition``; a merge adds
  ``model-merging`` and its method;
* ``library_name: transformers`` and ``pipeline_tag: automatic-speech-recognition``;
* ``license``: only when known, i.e. when the original is a local folder (or cache
  snapshot) whose own ``README.md`` declares one; otherwise the key is left out;
* ``model-index``: with ``results`` given, one result per test set (task
  ``automatic-speech-recognition``, dataset name and type = the test set's name), metric
  ``wer`` (and ``cer`` when known), in percent as :mod:`aode.evaluate` measures them.

The body says how the model was made, from the folder's ``aode.json``
(:func:`aode.model_folder.read_provenance`): for an expert the corpus and manifests and the
hyperparameters that matter (family, learning rate, LLRD alpha, epochs and steps, batch
size, precision, LoRA); for a merge the method, the members with their weights, the base and
whether it was included, the weight rules (counted), the options and the seed (AdaMerging:
a summary of the learnt coefficients per member, not all of them); then the test WERs, a
usage snippet (transformers' ``pipeline`` and AoDE's SpeechBrain wrapper) and a Provenance
section with the ``aode.json`` facts (long lists summarised).

Where cards are written: :func:`aode.merge.merge_models` writes one into its temporary
folder before the rename (a crash leaves no half folder); :func:`aode.train.export_expert`
likewise; recipes/average/merge.py rewrites the merged model's card with the WERs it
measured.

Hub uploads (``--push_to_hub <repo id>`` on the train and merge recipes):
:func:`check_hub_token` runs before any work and refuses a missing token or a malformed repo
id (:class:`aode.config.ConfigError`: the recipes exit with status 2); :func:`push_to_hub`
uploads the finished folder with ``HfApi.upload_folder``. The folder is uploaded as it is,
byte for byte, with ``aode.json`` and the card: transformers' ``model.push_to_hub`` would
save the weights anew and upload only the files ``save_pretrained`` writes (no ``aode.json``),
and would write a card of its own.
"""

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import huggingface_hub
from huggingface_hub import EvalResult
from huggingface_hub import ModelCard
from huggingface_hub import ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from aode.atomic import atomic_open
from aode.model_folder import CONFIG_FILE
from aode.model_folder import PROVENANCE_FILE
from aode.model_folder import read_config_json
from aode.model_folder import read_provenance

PathLike = str | os.PathLike

__all__ = [
    "CARD_FILE",
    "TAGS",
    "model_card",
    "write_model_card",
    "card_results",
    "check_hub_token",
    "push_to_hub",
]

CARD_FILE = "README.md"
TAGS = ("aode", "speechbrain", "automatic-speech-recognition")
MERGE_TAG = "model-merging"
TASK = "automatic-speech-recognition"
TASK_NAME = "Automatic Speech Recognition"
GENERIC_NAMES = ("expert", "merged")  # folder names that say nothing alone: the parent's name is added

# aode.atomic.temp_path: ".<stem>.tmp-<pid>-<hex><ext>" beside the final path
_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.tmp-\d+-[0-9a-f]+(?P<ext>.*)$")
_CACHE_SNAPSHOT = re.compile(r"models--(?P<id>[^/\\]+)[/\\]snapshots[/\\]")
_LONG_LIST = 10


# ----------------------------------------------------------------------------- the card


def model_card(
    folder: PathLike, results: Mapping[str, Any] | None = None, name: str | None = None, repo_id: str | None = None
) -> str:
    """The ``README.md`` text of model folder ``folder`` (module docstring).

    Args:
        folder: a model folder with its ``aode.json`` (an expert, a merge; a folder without
            one gets a card with the generic metadata only). A temporary folder of
            :mod:`aode.atomic` is named as the folder it will become.
        results: ``{test set: WER}`` or ``{test set: {"wer": ..., "cer": ...}}`` (the result
            dicts of :func:`aode.evaluate.evaluate_model`), in percent; None: no evaluation.
        name: the model's name (title and ``model-index`` name); default: the repo's name
            with ``repo_id``, else the folder's (``<parent>-expert``, ``<parent>-merged`` for
            the recipes' generic folder names).
        repo_id: the hub repository the folder goes to; the usage snippet loads it from there
            (default: from the folder).
    """
    folder = os.fspath(folder)
    final = _final_path(folder)
    info = read_provenance(folder) or {}
    if name is None:
        name = repo_id.split("/")[-1] if repo_id else _default_name(final)
    wers = _normalise_results(results)
    data = _card_data(folder, info, wers, name)
    body = _body(folder, info, wers, name, repo_id or final)
    text = f"---\n{data.to_yaml()}\n---\n\n{body}"
    return ModelCard(text).content  # parsed back by the hub's library: a card it cannot read is an error


def write_model_card(
    folder: PathLike, results: Mapping[str, Any] | None = None, name: str | None = None, repo_id: str | None = None
) -> str:
    """Write :func:`model_card` to ``<folder>/README.md`` atomically; returns its path."""
    path = os.path.join(os.fspath(folder), CARD_FILE)
    text = model_card(folder, results, name=name, repo_id=repo_id)
    with atomic_open(path) as f:
        f.write(text)
    return path


def card_results(folder: PathLike) -> dict[str, dict[str, float]]:
    """The test results an existing card reports, ``{test set: {"wer": ..., "cer": ...}}``
    (read back from its ``model-index``); empty when the folder has no card or no results."""
    path = os.path.join(os.fspath(folder), CARD_FILE)
    if not os.path.isfile(path):
        return {}
    results: dict[str, dict[str, float]] = {}
    for r in ModelCard.load(path).data.eval_results or []:
        if r.metric_type in ("wer", "cer"):
            results.setdefault(r.dataset_name, {})[r.metric_type] = r.metric_value
    return {s: r for s, r in results.items() if "wer" in r}


def _final_path(folder: str) -> str:
    """``folder`` itself, or the final path of an :mod:`aode.atomic` temporary folder."""
    parent, base = os.path.split(os.path.abspath(folder))
    match = _TEMP_NAME.match(base)
    return os.path.join(parent, match["stem"] + match["ext"]) if match else os.path.abspath(folder)


def _default_name(final: str) -> str:
    parent, base = os.path.split(final)
    if base in GENERIC_NAMES and os.path.basename(parent):
        return f"{os.path.basename(parent)}-{base}"
    return base


def _normalise_results(results: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    out = {}
    for test_set, value in (results or {}).items():
        entry = dict(value) if isinstance(value, Mapping) else {"wer": value}
        if entry.get("wer") is None:
            raise ValueError(f"results[{test_set!r}] has no WER: give a number or a dict with 'wer'")
        kept = {"wer": float(entry["wer"])}
        if entry.get("cer") is not None:
            kept["cer"] = float(entry["cer"])
        for metric, v in kept.items():
            if not math.isfinite(v):
                raise ValueError(f"results[{test_set!r}] {metric} is {v}")
        out[str(test_set)] = kept
    return out


def hub_id(source: Any) -> str | None:
    """The hub id of ``source``: a cache snapshot's repo, or ``source`` itself when it is no
    local path and has the form of a repo id; None for a local folder."""
    if not source:
        return None
    source = str(source)
    match = _CACHE_SNAPSHOT.search(source)
    if match:
        return match["id"].replace("--", "/")
    if os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source):
        return None
    try:
        validate_repo_id(source)
    except HFValidationError:
        return None
    return source


def _model_ref(source: Any) -> str | None:
    """``base_model``'s value for ``source``: its hub id, else its folder's name."""
    if not source:
        return None
    return hub_id(source) or os.path.basename(os.path.normpath(str(source)))


def _original(info: dict) -> str | list[str] | None:
    """The original model of a folder's provenance, as ``base_model`` names it."""
    if info.get("kind") == "merge":
        if info.get("base"):
            return _model_ref(info["base"])
        from_members = {
            _model_ref(p.get("base_model")) for p in info.get("member_provenance") or [] if p and p.get("base_model")
        }
        if len(from_members) == 1:
            return from_members.pop()
        refs = [_model_ref(m) for m in info.get("members") or []]
        return sorted(set(refs)) or None
    return _model_ref(info.get("base_model"))


def _license(info: dict) -> dict[str, str]:
    """``license`` (with ``license_name`` / ``license_link`` for "other") from the original's
    own card, when the original is a local folder that has one; else nothing."""
    source = info.get("base") if info.get("kind") == "merge" else info.get("base_model")
    if not source or not os.path.isfile(os.path.join(str(source), CARD_FILE)):
        return {}
    try:
        data = ModelCard.load(os.path.join(str(source), CARD_FILE), ignore_metadata_errors=True).data
    except Exception:  # noqa: BLE001 (an unreadable card of the original: license unknown)
        return {}
    if not data.license:
        return {}
    keys = ("license", "license_name", "license_link") if data.license == "other" else ("license",)
    return {k: getattr(data, k) for k in keys if getattr(data, k, None)}


def _card_data(folder: str, info: dict, wers: dict, name: str) -> ModelCardData:
    tags = list(TAGS)
    if info.get("kind") == "merge":
        tags += [MERGE_TAG, str(info.get("method"))]
    elif (info.get("lora") or {}).get("rank"):
        tags.append("lora")
    eval_results = []
    for test_set, metrics in wers.items():
        for metric, value in metrics.items():
            eval_results.append(
                EvalResult(
                    task_type=TASK,
                    task_name=TASK_NAME,
                    dataset_type=test_set,
                    dataset_name=test_set,
                    metric_type=metric,
                    metric_name=metric.upper(),
                    metric_value=value,
                )
            )
    return ModelCardData(
        base_model=_original(info),
        tags=list(dict.fromkeys(tags)),
        library_name="transformers",
        pipeline_tag=TASK,
        model_name=name if eval_results else None,
        eval_results=eval_results or None,
        **_license(info),
    )


# ----------------------------------------------------------------------------- the body


def _code(value: Any) -> str:
    return f"`{value}`"


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows if value is not None]
    return lines


def _compact(value: Any, limit: int = 160) -> str:
    text = json.dumps(_trimmed(value), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _trimmed(value: Any) -> Any:
    """``value`` with long lists (and AdaMerging's per-tensor coefficients) summarised."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if k == "coefficients" and isinstance(v, Mapping):
                out[k] = f"<{len(v)} tensors; see aode.json>"
            else:
                out[k] = _trimmed(v)
        return out
    if isinstance(value, (list, tuple)):
        if len(value) > _LONG_LIST:
            return f"<{len(value)} entries; see aode.json>"
        return [_trimmed(v) for v in value]
    return value


def _architecture(folder: str) -> str | None:
    config = read_config_json(folder) or {}
    arch = (config.get("architectures") or [None])[0]
    model_type = config.get("model_type")
    if arch and model_type:
        return f"{arch} (`{model_type}`)"
    return arch or model_type


def _body(folder: str, info: dict, wers: dict, name: str, load_from: str) -> str:
    kind = info.get("kind")
    lines = [f"# {name}", ""]
    if kind == "merge":
        lines += _merge_section(folder, info)
    elif kind == "expert":
        lines += _expert_section(folder, info)
    else:
        lines += ["An automatic speech recognition model folder written by AoDE (it has no `aode.json`).", ""]
    if wers:
        has_cer = any("cer" in m for m in wers.values())
        lines += ["## Evaluation", "", "Error rates in percent, after AoDE's text normalisation.", ""]
        lines.append("| Test set | WER (%) |" + (" CER (%) |" if has_cer else ""))
        lines.append("|---|---|" + ("---|" if has_cer else ""))
        for test_set, m in wers.items():
            cer = f" {m['cer']:.2f} |" if "cer" in m else (" |" if has_cer else "")
            lines.append(f"| {test_set} | {m['wer']:.2f} |{cer}")
        lines.append("")
    lines += _usage(load_from)
    lines += _provenance_section(info)
    return "\n".join(lines)


def _expert_section(folder: str, info: dict) -> list[str]:
    hp = info.get("hparams") or {}
    domain = info.get("domain") or hp.get("domain")
    original = info.get("base_model") or hp.get("model_source")
    lines = [
        f"An AoDE domain expert: `{_model_ref(original)}` fine-tuned"
        + (f" on {domain}" if domain else "")
        + " with layer-wise learning-rate decay (LLRD), to be merged with the other experts of the same original.",
        "",
        "## Training",
        "",
    ]
    lora = info.get("lora") or {}
    steps = hp.get("steps_per_epoch")
    accumulation = hp.get("grad_accumulation_factor") or 1
    rows = [
        ("Original model", _code(original) if original else None),
        ("Initialised from", _code(info["init_from"]) if info.get("init_from") else None),
        ("Domain", domain),
        ("Training manifest", _code(info.get("train_csv") or hp.get("train_csv"))),
        ("Validation manifest", _code(hp["valid_csv"]) if hp.get("valid_csv") else None),
        ("Model family", hp.get("family") or None),
        ("Architecture", _architecture(folder)),
        ("Learning rate", hp.get("lr")),
        ("LLRD alpha", f"{hp['llrd_alpha']} ({hp.get('llrd_mode', 'paper')})" if "llrd_alpha" in hp else None),
        ("Weight decay", hp.get("weight_decay") or None),
        ("Epochs", hp.get("number_of_epochs")),
        ("Steps per epoch", steps if steps else ("one pass over the training set" if hp else None)),
        ("Batch size", f"{hp['batch_size']} x accumulation {accumulation}" if "batch_size" in hp else None),
        ("Precision", hp.get("precision")),
        ("Frozen decoder", "yes" if hp.get("freeze_decoder") else None),
        ("Layerdrop", hp.get("layerdrop") or None),
        (
            "LoRA",
            f"rank {lora['rank']}, alpha {lora.get('alpha')}; merged into the weights"
            + (f" ({info['lora_merged_modules']} modules)" if info.get("lora_merged_modules") is not None else "")
            if lora.get("rank")
            else None,
        ),
        ("Seed", hp.get("seed")),
        ("Best dev WER (%)", info.get("dev_wer")),
    ]
    return lines + _table(rows) + [""]


def _member_name(path: str, provenance: dict | None) -> str:
    if provenance and provenance.get("domain"):
        return str(provenance["domain"])
    return _default_name(os.path.abspath(path))


def _merge_section(folder: str, info: dict) -> list[str]:
    method = info.get("method")
    members = info.get("members") or []
    member_info = info.get("member_provenance") or [None] * len(members)
    weights = info.get("weights") or []
    base = info.get("base")
    include_base = bool(info.get("include_base"))
    ada = info.get("adamerging")
    lines = [
        f"A merge of {len(members)} AoDE domain experts"
        + (f" of `{_model_ref(base)}`" if base else "")
        + f" with `{method}`"
        + (", the original model included as a member" if include_base else "")
        + ". No weight was trained: every weight is computed from the members'.",
        "",
        "## Merge",
        "",
    ]
    rules = info.get("weight_rules") or []
    options = (ada or {}).get("options") if ada else info.get("options")
    rows = [
        ("Method", _code(method)),
        ("Original (base)", _code(base) if base else "none"),
        ("Original included as a member", "yes" if include_base else "no"),
        ("Weight rules", f"{len(rules)}" + (" (AdaMerging's learnt coefficients, one per tensor)" if ada else "")),
        ("Options", _code(_compact(options)) if options else "none"),
        ("Seed", info.get("seed")),
        ("Created", info.get("created")),
    ]
    lines += _table(rows) + ["", "### Members", "", "| # | Member | Weight | Folder |", "|---|---|---|---|"]
    for i, path in enumerate(members):
        weight = weights[i] if i < len(weights) else None
        member = _member_name(path, member_info[i] if i < len(member_info) else None)
        lines.append(f"| {i + 1} | {member} | {weight} | `{path}` |")
    if include_base and base:
        lines.append(f"| {len(members) + 1} | original | {weights[-1] if weights else None} | `{base}` |")
    lines.append("")
    if ada:
        lines += _adamerging_section(ada, members, member_info)
    return lines


def _adamerging_section(ada: dict, members: list, member_info: list) -> list[str]:
    coefficients = ada.get("coefficients") or {}
    opts = ada.get("options") or {}
    objective = ada.get("objective") or []
    lines = [
        "### AdaMerging",
        "",
        f"Layer-wise coefficients learnt over {len(objective) or opts.get('steps')} steps "
        f"(objective `{opts.get('objective')}`, lr {opts.get('lr')}) on "
        f"{', '.join(opts.get('data') or {}) or 'the dev sets'}: the objective went from "
        f"{_number(ada.get('objective_first'))} to {_number(ada.get('objective_last'))}"
        + (f" in {ada['seconds']} s" if ada.get("seconds") is not None else "")
        + f". {len(coefficients)} tensors have a coefficient per member (clamped to [0, 1]; "
        "all of them in `aode.json`); per member:",
        "",
        "| Member | Mean | Min | Max |",
        "|---|---|---|---|",
    ]
    columns = list(zip(*coefficients.values())) if coefficients else []
    for i, path in enumerate(members):
        values = columns[i] if i < len(columns) else ()
        stats = (sum(values) / len(values), min(values), max(values)) if values else (None, None, None)
        lines.append(
            f"| {_member_name(path, member_info[i] if i < len(member_info) else None)} | "
            + " | ".join(_number(v) for v in stats)
            + " |"
        )
    return lines + [""]


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def _usage(load_from: str) -> list[str]:
    return [
        "## Usage",
        "",
        "With transformers:",
        "",
        "```python",
        "import soundfile",
        "from transformers import pipeline",
        "",
        f'asr = pipeline("automatic-speech-recognition", model="{load_from}")',
        'audio, rate = soundfile.read("audio.wav", dtype="float32")  # mono; resampled to 16 kHz when needed',
        'print(asr({"raw": audio, "sampling_rate": rate})["text"])',
        "```",
        "",
        "With AoDE's SpeechBrain wrapper (as AoDE trains, merges and evaluates it):",
        "",
        "```python",
        "import torch",
        "from speechbrain.dataio.dataio import read_audio",
        "",
        "from aode.models import load_asr_model",
        "",
        f'asr = load_asr_model("{load_from}").eval()',
        'wav = read_audio("audio.wav")  # 16 kHz mono',
        "with torch.no_grad():",
        "    print(asr.transcribe(wav.unsqueeze(0), torch.tensor([1.0]))[0])",
        "```",
        "",
    ]


def _provenance_section(info: dict) -> list[str]:
    if not info:
        return []
    lines = [
        "## Provenance",
        "",
        f"What AoDE recorded when it wrote the folder (`{PROVENANCE_FILE}`, shipped with the weights)"
        + (f", {info['created']}" if info.get("created") else "")
        + ".",
        "",
    ]
    for i, p in enumerate(info.get("member_provenance") or []):
        if p:
            facts = {k: p.get(k) for k in ("kind", "domain", "base_model", "train_csv", "dev_wer") if p.get(k)}
            lines.append(f"- member {i + 1}: {_code(_compact(facts, 400))}")
    if lines[-1]:
        lines.append("")
    lines += [
        "<details><summary>aode.json (long lists summarised)</summary>",
        "",
        "```json",
        json.dumps(_trimmed(info), indent=1, default=str),
        "```",
        "",
        "</details>",
        "",
    ]
    return lines


# ----------------------------------------------------------------------------- the hub


def check_hub_token(repo_id: str | None) -> str | None:
    """Before any work: the token for ``--push_to_hub repo_id`` (None when ``repo_id`` is).

    Raises :class:`aode.config.ConfigError` (the recipes exit with status 2) when the repo id
    is malformed or no token is found (``HF_TOKEN``, or ``hf auth login``'s token file).
    """
    if not repo_id:
        return None
    from aode.config import ConfigError

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ConfigError(f"push_to_hub: {err}") from None
    try:
        token = huggingface_hub.get_token()
    except Exception as err:  # noqa: BLE001 (a failed OIDC exchange: no usable token)
        raise ConfigError(f"push_to_hub {repo_id!r}: no Hugging Face token ({err})") from None
    if not token:
        raise ConfigError(
            f"push_to_hub {repo_id!r} needs a Hugging Face token with write access: run `hf auth login` "
            "or set HF_TOKEN, then run again (nothing was done)"
        )
    return token


def push_to_hub(folder: PathLike, repo_id: str | None, token: str | None = None) -> Any:
    """Upload the finished model folder ``folder`` to the hub repository ``repo_id`` (created
    when missing); a no-op returning None when ``repo_id`` is None.

    The card is rewritten first so that its usage snippet loads ``repo_id`` (the test results
    it reports are kept); then ``HfApi.upload_folder`` uploads every file of the folder, the
    weights, ``aode.json`` and ``README.md`` included. Returns the commit info.
    """
    if not repo_id:
        return None
    token = token or check_hub_token(repo_id)
    folder = os.fspath(folder)
    missing = [f for f in (CONFIG_FILE, PROVENANCE_FILE) if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise FileNotFoundError(f"{folder} is no finished model folder: it lacks {missing}")
    write_model_card(folder, card_results(folder), repo_id=repo_id)
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        repo_type="model",
        commit_message=f"AoDE: upload {os.path.basename(os.path.abspath(folder))}",
    )
    print(f"uploaded {folder} to https://huggingface.co/{repo_id}")
    return info
