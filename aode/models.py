"""The two model families of the paper behind one small interface.

* ``WhisperASR``: attention encoder-decoder (Whisper, paper Table VI), through SpeechBrain's
  ``speechbrain.integrations.huggingface.whisper.Whisper`` wrapper; decoded with
  SpeechBrain's Whisper greedy or beam searchers.
* ``CTCASR``: any transformers ``AutoModelForCTC`` (``ParakeetForCTC``, paper Tables
  III-VIII; wav2vec2, ...) with its own processor; greedy CTC decoding.

Both take a hub id or a local model folder and export a standard transformers folder
(:meth:`export`) that ``from_pretrained`` and ``transformers.pipeline`` load.
"""

from __future__ import annotations

import logging
import os
import re
import types
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

# Model-folder files (provenance, processor files) are aode.model_folder's; re-exported here.
from aode.model_folder import PROVENANCE_FILE  # noqa: F401
from aode.model_folder import copy_processor_files  # noqa: F401
from aode.model_folder import read_provenance  # noqa: F401
from aode.model_folder import write_provenance  # noqa: F401

if TYPE_CHECKING:
    from speechbrain.dataio.batch import PaddedBatch
    from transformers import PretrainedConfig
    from transformers import PreTrainedModel
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def _looks_local(source):
    return os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source)


_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$|^[\w.-]+$")


def resolve_model_folder(source: str | os.PathLike) -> str:
    """The local folder of ``source``: a folder as it is, a hub id resolved as
    ``from_pretrained`` resolves it (the Hugging Face cache first; a download only when the
    hub is reachable and ``HF_HUB_OFFLINE`` is not set). Raises
    :class:`aode.config.ModelNotFoundError` (a ConfigError and a FileNotFoundError: the command
    lines print one ``error:`` line) saying how to get the model when neither works."""
    from aode.config import ModelNotFoundError

    source = os.path.expanduser(os.fspath(source))
    if os.path.isdir(source) or _looks_local(source) or not _REPO_ID.match(source):
        if not os.path.isdir(source):
            raise ModelNotFoundError(f"model folder {source!r} does not exist")
        return source
    from huggingface_hub import snapshot_download

    cache_dir = os.environ.get("HF_HUB_CACHE")  # read now, not at import (tests, notebooks)
    try:
        return snapshot_download(source, local_files_only=True, cache_dir=cache_dir)
    except Exception as cached_error:  # noqa: BLE001 (any cache miss means: try the hub)
        reason = cached_error
    offline = any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    if not offline:
        try:
            return snapshot_download(source, cache_dir=cache_dir)
        except Exception as download_error:  # noqa: BLE001
            reason = download_error
    tried = "HF_HUB_OFFLINE is set" if offline else f"and no download: {type(reason).__name__}"
    raise ModelNotFoundError(
        f"model {source!r} is neither a folder nor in the Hugging Face cache ({tried}); download it first "
        f"where the hub is reachable (`hf download {source}`, or `from_pretrained` once) or give its folder"
    )


def load_hf_config(source: str | os.PathLike) -> PretrainedConfig:
    """The transformers config object (``AutoConfig``) of a hub id or folder, with a clear error
    when missing. (A model folder's config.json as a plain dict:
    :func:`aode.model_folder.read_config_json`.)"""
    from transformers import AutoConfig

    source = str(source)
    if _looks_local(source):
        source = os.path.expanduser(source)
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise FileNotFoundError(
                f"model folder {source!r} does not exist or has no config.json "
                "(expected a transformers model folder, e.g. an AoDE expert's export)"
            )
    return AutoConfig.from_pretrained(source)


FAMILIES = {}  # name -> ASRModel subclass, in registration order
_Family = TypeVar("_Family", bound="type[ASRModel]")


def register_family(cls: _Family) -> _Family:
    """Class decorator: make a model family known to :func:`load_asr_model` (the only place
    that chooses a family; a new family is one new class)."""
    FAMILIES[cls.family] = cls
    return cls


def detect_family(config: PretrainedConfig) -> str:
    """The registered family name that handles a transformers config; ValueError otherwise."""
    for name, cls in FAMILIES.items():
        if cls.handles(config):
            return name
    archs = getattr(config, "architectures", None) or []
    raise ValueError(
        f"unknown model type {config.model_type!r} (architectures {archs}): AoDE supports "
        f"{', '.join(FAMILIES)} models (e.g. Whisper; ParakeetForCTC and any AutoModelForCTC)"
    )


# Integer config keys that fix tensor shapes or the layer structure (widths, depths, heads,
# kernels, vocabularies, positions); dropouts, layerdrop and generation settings do not.
_SHAPE_KEY = re.compile(
    r"(size|dim|layers|heads|d_model|ffn|positions|kernel|channels|bins|subsampling|stride|vocab|groups)", re.IGNORECASE
)


def architecture_signature(config: PretrainedConfig) -> dict[str, Any]:
    """What two models must share to be fine-tuned from one another or averaged: the model
    type and every integer config key that fixes a shape or the depth, sub-configs included
    (e.g. ``encoder_config.num_hidden_layers``)."""

    def shape_keys(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in sorted(values.items()):
            if isinstance(value, dict):
                out.update(shape_keys(value, f"{prefix}{key}."))
            elif isinstance(value, int) and not isinstance(value, bool) and _SHAPE_KEY.search(key):
                out[prefix + key] = value
            elif (
                isinstance(value, (list, tuple))
                and value
                and _SHAPE_KEY.search(key)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            ):
                out[prefix + key] = list(value)
        return out

    return {
        "model_type": config.model_type,
        "vocab_size": getattr(config, "vocab_size", None),
        **shape_keys(config.to_dict()),
    }


def check_same_architecture(config: PretrainedConfig, other: PretrainedConfig, what: str, other_what: str) -> None:
    """Raise ValueError naming the differing keys when the two configs' architectures differ."""
    sig, other_sig = architecture_signature(config), architecture_signature(other)
    if sig != other_sig:
        diff = {
            k: (sig.get(k), other_sig.get(k))
            for k in sorted(set(sig) | set(other_sig))
            if sig.get(k) != other_sig.get(k)
        }
        shown = ", ".join(f"{k}: {a} vs {b}" for k, a, b in ((k, *v) for k, v in list(diff.items())[:6]))
        raise ValueError(f"{what} and {other_what} have different architectures ({shown})")


def set_layerdrop(hf_model: nn.Module, layerdrop: float) -> int:
    """Set every layerdrop probability of ``hf_model`` (modules and config) to ``layerdrop``.

    Hub configs carry a training-time layerdrop (parakeet-ctc-1.1b's converted config: 0.1;
    NVIDIA fine-tuned without it), and transformers copies it into each stack at load time.
    Skipped layers leave parameters without gradients, which DDP must be told about.
    Returns the number of stacks changed.
    """
    changed = 0
    for module in hf_model.modules():
        if isinstance(getattr(module, "layerdrop", None), (int, float)) and not isinstance(module.layerdrop, bool):
            module.layerdrop = float(layerdrop)
            changed += 1

    def set_in(config: PretrainedConfig) -> None:
        for key in list(vars(config)):
            value = getattr(config, key)
            if "layerdrop" in key and isinstance(value, (int, float)):
                setattr(config, key, float(layerdrop))
            elif hasattr(value, "to_dict") and hasattr(value, "model_type"):
                set_in(value)

    set_in(hf_model.config)
    return changed


def load_asr_model(
    source: str | os.PathLike, family: str | None = None, save_path: str | None = None, **options: Any
) -> ASRModel:
    """Load ``source`` (hub id or folder) as the family that handles it (``WhisperASR``, ``CTCASR``).

    ``family`` (``"whisper"``/``"ctc"``), when given, must match the checkpoint. ``options``
    (training and decoding settings: ``beam_size``, ``layerdrop``, ...) go to the family only
    where it declares them (:attr:`ASRModel.option_names`): one hparams file drives every
    family, and a family never sees another's options. An option that no family declares is a
    TypeError.
    """
    config = load_hf_config(source)
    found = detect_family(config)
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {tuple(FAMILIES)}")
    if family is not None and family != found:
        raise ValueError(f"hparams say model family {family!r} but {source!r} is a {found} model")
    known = {name for cls in FAMILIES.values() for name in cls.option_names}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown model options {unknown}; the families take {sorted(known)}")
    cls = FAMILIES[found]
    return cls(str(source), save_path=save_path, **{k: v for k, v in options.items() if k in cls.option_names})


# The transformers naming convention of encoder and decoder stacks (``encoder.layers.<i>.``,
# ``decoder.layers.<j>.``, possibly under a prefix such as ``wav2vec2.``).
_ENCODER_LAYER = re.compile(r"(?:^|\.)encoder\.layers?\.(\d+)\.")
_DECODER_LAYER = re.compile(r"(?:^|\.)decoder\.layers?\.(\d+)\.")
_DECODER_PART = re.compile(r"(?:^|\.)decoder\.")
_ENCODER_PART = re.compile(r"(?:^|\.)encoder\.")

Layer = tuple[str, int | None]  # (stack, layer index or None): ASRModel.layer_of


def transformer_layer(name: str) -> Layer | None:
    """:meth:`ASRModel.layer_of` for the transformers naming convention (Whisper, Parakeet,
    wav2vec2 all follow it): ``("encoder", i)`` under ``encoder.layers.<i>.``,
    ``("decoder", j)`` under ``decoder.layers.<j>.``, ``("decoder", None)`` or
    ``("encoder", None)`` elsewhere under ``decoder.`` or ``encoder.``, else None."""
    if match := _ENCODER_LAYER.search(name):
        return "encoder", int(match.group(1))
    if match := _DECODER_LAYER.search(name):
        return "decoder", int(match.group(1))
    if _DECODER_PART.search(name):
        return "decoder", None
    if _ENCODER_PART.search(name):
        return "encoder", None
    return None


class _EncoderStop(Exception):
    """Raised by a hook to end an encoder pass once the states asked for are captured."""


def _hidden_states_up_to(run: Callable[[], Any], layers: Sequence[nn.Module], up_to: int | None) -> list[torch.Tensor]:
    """The encoder's hidden states 0..``up_to`` (all, with None or ``up_to`` at the last):
    ``run()`` is the encoder call with ``output_hidden_states=True``. Below the last state the
    pass stops at the input of layer ``up_to``: state ``i`` is the input of layer ``i`` (what
    transformers records for every state but the last, which is after a final norm where the
    encoder has one), so the layers above are never computed."""
    if up_to is None or up_to >= len(layers):
        return list(run().hidden_states)
    captured: list[torch.Tensor] = []

    def capture(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        if len(captured) == up_to + 1:
            raise _EncoderStop

    handles = [layer.register_forward_pre_hook(capture, with_kwargs=True) for layer in layers[: up_to + 1]]
    try:
        run()
    except _EncoderStop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    if len(captured) != up_to + 1:
        raise RuntimeError(f"the encoder ran {len(captured)} of the {up_to + 1} layers whose inputs were asked for")
    return captured


_ENCODER_LAYER_MODULE = re.compile(r"(?:^|\.)encoder\.layers\.(\d+)$")


class ASRModel(nn.Module):
    """What every model family provides; the Brain, the data pipelines, Fisher estimation and
    the benchmarks use only this, so nothing outside this module branches on the family.

    A family sets ``family`` (its name), ``text_field`` (the manifest column it trains on:
    ``wrd`` or ``wrd_raw``), ``text_keys`` (the batch keys that :meth:`text_items` makes) and
    ``option_names`` (the keyword options of its constructor), and implements the methods below
    that raise NotImplementedError; the others have a documented default. Its constructor takes
    ``(source, save_path=None, **options)``. Register it with :func:`register_family`.

    Names: every parameter or buffer name that the methods take or give is its name in
    :attr:`hf_model` (``hf_model.named_parameters()``), whatever module path leads to
    ``hf_model`` inside the family's class.
    """

    family = None
    text_field = "wrd"
    text_keys = ("tokens",)
    # The keyword options (beyond ``source`` and ``save_path``) that the constructor takes:
    # training and decoding settings of this family; load_asr_model passes it no others.
    option_names: tuple[str, ...] = ()

    @classmethod
    def handles(cls, config: PretrainedConfig) -> bool:
        """True when this family loads a checkpoint with this transformers config."""
        raise NotImplementedError

    def text_items(self, text: str) -> tuple[torch.Tensor, ...]:
        """The training targets of one transcript, one tensor per name in ``text_keys``."""
        raise NotImplementedError

    def unknown_characters(self, characters: Iterable[str]) -> set[str]:
        """The ``characters`` that :meth:`text_items` cannot encode: those the tokenizer turns
        into its unknown token (or drops). None by default (a byte-level tokenizer, Whisper's,
        encodes every character); a family with a closed vocabulary overrides it."""
        return set()

    def batch_inputs(self, batch: PaddedBatch) -> tuple[torch.Tensor, ...]:
        """The positional arguments of :meth:`forward` for a SpeechBrain batch (on device)."""
        raise NotImplementedError

    def batch_targets(self, batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens, relative lengths)`` that :meth:`loss` compares the outputs with."""
        raise NotImplementedError

    def loss(self, outputs: dict[str, torch.Tensor], tokens: torch.Tensor, tokens_lens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transcribe_outputs(self, outputs: dict[str, torch.Tensor], batch: PaddedBatch) -> list[str]:
        """Hypothesis texts for a batch whose forward outputs are already computed."""
        raise NotImplementedError

    def transcribe(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> list[str]:
        """Hypothesis texts for a padded batch of 16 kHz waveforms."""
        raise NotImplementedError

    def export(self, folder: str | os.PathLike, provenance: dict[str, Any] | None = None) -> None:
        """Write a transformers model folder (with processor files and ``aode.json``)."""
        raise NotImplementedError

    def freeze_fixed_parameters(self) -> None:
        """Re-freeze what the architecture defines as fixed (after LoRA or a merge unfroze it)."""

    def batch_loss(self, batch: PaddedBatch) -> torch.Tensor:
        """Forward and loss of one batch, as a bare training loop or Fisher estimation needs."""
        return self.loss(self(*self.batch_inputs(batch)), *self.batch_targets(batch))

    def prediction_entropy(self, batch: PaddedBatch) -> torch.Tensor:
        """Mean Shannon entropy (nats) of the model's own output distributions on a batch's
        audio, without its transcripts: the unsupervised objective of AdaMerging."""
        raise NotImplementedError

    def encoder_layers(self) -> list[nn.Module]:
        """The encoder's layers in order (``encoder.layers.<i>`` of :attr:`hf_model`, the
        transformers convention): ``len(encoder_states) == len(encoder_layers()) + 1``."""
        found = {}
        for name, module in self.hf_model.named_modules():
            if match := _ENCODER_LAYER_MODULE.search(name):
                found[int(match.group(1))] = module
        if sorted(found) != list(range(len(found))) or not found:
            raise NotImplementedError(f"{type(self).__name__}: no encoder.layers.<i> modules to list")
        return [found[i] for i in range(len(found))]

    def encoder_states(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor, up_to: int | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The hidden states of the encoder for a padded batch of 16 kHz waveforms (``wav_lens``:
        SpeechBrain's relative lengths): ``(states, valid_frames)``. ``up_to``: only states
        0..``up_to``, the layers above left uncomputed (a router that reads a middle layer
        costs part of an encoder pass); the states are those of the full pass.

        ``states`` is a list of ``(batch, frames, dim)`` tensors as transformers'
        ``output_hidden_states`` gives them: index 0 the input of the first encoder layer (the
        front end's output: embeddings, subsampling), index ``i`` the output of layer ``i``
        (the last one after the encoder's final norm where it has one), so
        ``len(states) == number of encoder layers + 1``. ``valid_frames`` (LongTensor,
        ``(batch,)``) is the number of frames of each utterance that come from its audio, not
        from padding. No gradient is switched off here: callers that only read wrap it in
        ``torch.no_grad``."""
        raise NotImplementedError

    @property
    def hf_model(self) -> PreTrainedModel:
        """The transformers model inside: what LoRA wraps, Fisher and Gram estimation name,
        and (under :meth:`stored_name`) what :meth:`export` writes."""
        raise NotImplementedError

    def layer_of(self, name: str) -> Layer | None:
        """The layer of ``hf_model``'s parameter (or buffer) ``name``, the model's own group
        matcher for layer-wise learning-rate decay (:mod:`aode.llrd`) and RegMean++'s blocks:
        ``(stack, i)`` in layer ``i`` (0 = nearest the input) of the ``"encoder"`` or
        ``"decoder"`` stack, ``(stack, None)`` in that stack but in none of its layers
        (embeddings, a front end, a final norm), None outside both (a CTC head).
        :func:`transformer_layer` implements it for the transformers naming convention."""
        raise NotImplementedError

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """The encoder's parameters (what the frozen-decoder baseline trains). By default every
        parameter of ``hf_model`` that :meth:`layer_of` puts in the ``"encoder"`` stack."""
        for name, param in self.hf_model.named_parameters():
            layer = self.layer_of(name)
            if layer is not None and layer[0] == "encoder":
                yield param

    def stored_name(self, name: str) -> str:
        """The tensor name under which :meth:`export` writes ``hf_model``'s parameter or
        buffer ``name``. By default ``name`` itself (an export that is
        ``hf_model.save_pretrained``)."""
        return name

    def stored_names(self, stored: Collection[str], names: Iterable[str] | None = None) -> dict[str, str]:
        """``{name: tensor name}`` for each of ``names`` (default: ``hf_model``'s parameters)
        that a folder whose weights hold the tensor names ``stored`` has: under
        :meth:`stored_name`, else under its own name (a folder saved as the bare transformers
        model). Names the folder lacks are left out."""
        if names is None:
            names = (name for name, _ in self.hf_model.named_parameters())
        out = {}
        for name in names:
            key = next((c for c in (self.stored_name(name), name) if c in stored), None)
            if key is not None:
                out[name] = key
        return out

    def hf_names(self) -> dict[str, str]:
        """``{name in self.named_parameters(): its name in hf_model}`` of the parameters that
        ``hf_model`` holds."""
        by_id = {id(p): n for n, p in self.hf_model.named_parameters()}
        return {n: by_id[id(p)] for n, p in self.named_parameters() if id(p) in by_id}


def masked_entropy(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean entropy of ``softmax(logits)`` (``batch x time x classes``) over the first
    ``lengths[b]`` positions of each row: every valid position counts once."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    mask = torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths.to(logits.device)[:, None]
    return (entropy * mask).sum() / mask.sum().clamp(min=1)


def _log_mel_per_clip(whisper: nn.Module, audio: torch.Tensor, padding: int = 0) -> torch.Tensor:
    """Whisper's log-mel features of a batch, each clip floored at its own maximum minus 8 (as
    openai-whisper's ``log_mel_spectrogram`` and transformers' ``WhisperFeatureExtractor`` do)."""
    if padding > 0:
        audio = nn.functional.pad(audio, (0, padding))
    window = torch.hann_window(whisper._n_fft, device=audio.device)
    stft = torch.stft(audio, whisper._n_fft, whisper._hop_length, window=window, return_complex=True)
    log_spec = torch.clamp(whisper._mel_filters @ stft[..., :-1].abs() ** 2, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    return (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0


@register_family
class WhisperASR(ASRModel):
    """Whisper through SpeechBrain's wrapper; cross-entropy training, S2S searchers.

    Training targets are the raw cased, punctuated text (``wrd_raw``) tokenised with the
    model's own tokenizer and framed by its prefix tokens and end-of-text.
    """

    family = "whisper"
    text_field = "wrd_raw"
    text_keys = ("tokens_bos", "tokens_eos")
    option_names = ("language", "task", "beam_size", "max_decode_ratio", "label_smoothing", "layerdrop")

    @classmethod
    def handles(cls, config: PretrainedConfig) -> bool:
        return config.model_type == "whisper"

    def __init__(
        self,
        source: str,
        save_path: str | None = None,
        language: str | None = None,
        task: str = "transcribe",
        beam_size: int = 1,
        max_decode_ratio: float = 1.0,
        label_smoothing: float = 0.0,
        layerdrop: float = 0.0,
    ) -> None:
        super().__init__()
        from speechbrain.integrations.huggingface.whisper import Whisper

        self.source = source
        save_path = save_path or os.path.join(os.path.expanduser("~"), ".cache", "aode")
        self.whisper = Whisper(source, save_path, sampling_rate=16000, language=language, task=task)
        # SpeechBrain floors the log-mel features at the LOUDEST clip of the whole batch minus 8;
        # Whisper (openai-whisper, transformers' feature extractor) floors each clip at its own
        # maximum. A batch-wide floor made a clip's transcript depend on the clips decoded with it.
        self.whisper.log_mel_spectrogram = types.MethodType(_log_mel_per_clip, self.whisper)
        self.label_smoothing = label_smoothing
        self.beam_size = beam_size
        self.max_decode_ratio = max_decode_ratio
        self._searcher = None
        set_layerdrop(self.hf_model, layerdrop)
        self.freeze_fixed_parameters()

    def freeze_fixed_parameters(self) -> None:
        """Keep the encoder's sinusoidal positions fixed, as Whisper defines them (SpeechBrain's
        wrapper makes every parameter trainable, and they would drift)."""
        self.hf_model.encoder.embed_positions.requires_grad_(False)

    @property
    def hf_model(self) -> PreTrainedModel:
        """The ``WhisperModel`` (encoder and decoder, no output projection: it is tied to the
        token embeddings)."""
        return self.whisper.model

    def layer_of(self, name: str) -> Layer | None:
        return transformer_layer(name)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.hf_model.get_encoder().parameters()

    def stored_name(self, name: str) -> str:
        """``model.<name>``: :meth:`export` writes a ``WhisperForConditionalGeneration``, whose
        ``WhisperModel`` is its ``model``."""
        return f"model.{name}"

    @property
    def config(self) -> PretrainedConfig:
        return self.whisper.model.config

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.whisper.tokenizer

    def encode_text(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens_bos, tokens_eos) LongTensors for teacher forcing."""
        ids = self.tokenizer.encode(" " + text.strip(), add_special_tokens=False)
        full = list(self.tokenizer.prefix_tokens) + ids + [self.whisper.eos]
        return torch.LongTensor(full[:-1]), torch.LongTensor(full[1:])

    def text_items(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_text(text)

    def batch_inputs(self, batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        wavs, wav_lens = batch.sig
        return wavs, wav_lens, batch.tokens_bos[0]

    def batch_targets(self, batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.tokens_eos

    def transcribe_outputs(self, outputs: dict[str, torch.Tensor], batch: PaddedBatch) -> list[str]:
        wavs, wav_lens = batch.sig
        return self.transcribe(wavs, wav_lens, encoder_out=outputs["encoder_out"])

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor, tokens_bos: torch.Tensor) -> dict[str, torch.Tensor]:
        enc, logits, _ = self.whisper(wavs, tokens_bos)
        return {"encoder_out": enc, "logits": logits}

    def loss(
        self, outputs: dict[str, torch.Tensor], tokens_eos: torch.Tensor, tokens_eos_lens: torch.Tensor
    ) -> torch.Tensor:
        import speechbrain as sb

        log_probs = F.log_softmax(outputs["logits"], dim=-1)
        return sb.nnet.losses.nll_loss(
            log_probs, tokens_eos, length=tokens_eos_lens, label_smoothing=self.label_smoothing
        )

    def prediction_entropy(self, batch: PaddedBatch) -> torch.Tensor:
        """Entropy of the decoder's token posteriors along its own greedy hypothesis
        (prefix tokens to end-of-text), teacher-forced: the transcripts are not read."""
        wavs, wav_lens = batch.sig
        with torch.no_grad():
            hyps = self.transcribe(wavs, wav_lens)
        inputs = [self.encode_text(h)[0] for h in hyps]
        lengths = torch.tensor([len(t) for t in inputs])
        tokens_bos = torch.nn.utils.rnn.pad_sequence(inputs, batch_first=True, padding_value=self.whisper.eos)
        logits = self(wavs, wav_lens, tokens_bos.to(wavs.device))["logits"]
        return masked_entropy(logits, lengths)

    def _get_searcher(self):
        if self._searcher is None:
            from speechbrain.decoders.seq2seq import S2SWhisperBeamSearcher
            from speechbrain.decoders.seq2seq import S2SWhisperGreedySearcher

            if self.beam_size > 1:
                self._searcher = S2SWhisperBeamSearcher(
                    module=[self.whisper],
                    min_decode_ratio=0.0,
                    max_decode_ratio=self.max_decode_ratio,
                    beam_size=self.beam_size,
                )
            else:
                self._searcher = S2SWhisperGreedySearcher(
                    model=self.whisper,
                    min_decode_ratio=0.0,
                    max_decode_ratio=self.max_decode_ratio,
                )
        return self._searcher

    @torch.no_grad()
    def transcribe(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor, encoder_out: torch.Tensor | None = None
    ) -> list[str]:
        if encoder_out is None:
            encoder_out = self.whisper.forward_encoder(self.whisper._get_mel(wavs))
        hyps = self._get_searcher()(encoder_out.detach(), wav_lens)[0]
        return [self.tokenizer.decode(h, skip_special_tokens=True).strip() for h in hyps]

    # Whisper's encoder: 10 ms mel hop, then a stride-2 convolution: one frame per 320 samples
    SAMPLES_PER_ENCODER_FRAME = 320

    def encoder_states(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor, up_to: int | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Whisper pads (or trims) every clip to 30 s, so each state has
        ``max_source_positions`` (1500) frames; the valid ones are those of the audio, one per
        320 samples rounded up (at most 1500). Index 0: the convolutions' output plus the
        positions; the last: the final layer's output after the encoder's layer norm."""
        mel = self.whisper._get_mel(wavs)
        encoder = self.hf_model.encoder
        states = _hidden_states_up_to(lambda: encoder(mel, output_hidden_states=True), encoder.layers, up_to)
        samples = (wav_lens.to(torch.float64) * wavs.shape[1]).round().long()
        valid = (samples + self.SAMPLES_PER_ENCODER_FRAME - 1) // self.SAMPLES_PER_ENCODER_FRAME
        return states, valid.clamp(min=1, max=states[-1].shape[1]).to(states[-1].device)

    def export(self, folder: str | os.PathLike, provenance: dict[str, Any] | None = None) -> None:
        """Write a ``WhisperForConditionalGeneration`` folder with tokenizer and processor."""
        from transformers import WhisperForConditionalGeneration

        os.makedirs(folder, exist_ok=True)
        full = WhisperForConditionalGeneration(self.config)
        missing, unexpected = full.model.load_state_dict(self.hf_model.state_dict(), strict=False)
        if unexpected or [m for m in missing if "embed_positions" not in m]:
            raise RuntimeError(f"export mismatch: missing {missing}, unexpected {unexpected}")
        full.config.architectures = ["WhisperForConditionalGeneration"]
        full.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        self.whisper.feature_extractor.save_pretrained(folder)
        copy_processor_files(self.source, folder, overwrite=False)
        write_provenance(folder, provenance or {})


@register_family
class CTCASR(ASRModel):
    """Any transformers CTC model with its processor; greedy CTC decoding.

    Training targets are ``wrd`` (lowercase, apostrophes kept), the text form of
    Parakeet's and wav2vec2's character/subword vocabularies.
    """

    family = "ctc"
    text_field = "wrd"
    option_names = ("layerdrop",)  # greedy CTC decoding has no options

    @classmethod
    def handles(cls, config: PretrainedConfig) -> bool:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

        archs = getattr(config, "architectures", None) or []
        return config.model_type in MODEL_FOR_CTC_MAPPING_NAMES or any(a.endswith("ForCTC") for a in archs)

    def text_items(self, text: str) -> tuple[torch.Tensor]:
        return (self.encode_text(text),)

    def batch_inputs(self, batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.sig

    def batch_targets(self, batch: PaddedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.tokens

    def transcribe_outputs(self, outputs: dict[str, torch.Tensor], batch: PaddedBatch) -> list[str]:
        return self.transcribe(*batch.sig, outputs=outputs)

    def freeze_fixed_parameters(self) -> None:
        """Nothing in a CTC model is fixed by definition."""

    def __init__(self, source: str, save_path: str | None = None, layerdrop: float = 0.0) -> None:
        super().__init__()
        from transformers import AutoFeatureExtractor
        from transformers import AutoModelForCTC
        from transformers import AutoTokenizer

        self.source = source
        self.model = AutoModelForCTC.from_pretrained(source, cache_dir=save_path)
        set_layerdrop(self.model, layerdrop)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(source, cache_dir=save_path)
        self._tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=save_path)
        self.blank_id = self.model.config.pad_token_id
        if self.blank_id is None:
            raise ValueError(f"CTC model {source!r} defines no pad_token_id (its blank)")

    @property
    def hf_model(self) -> PreTrainedModel:
        """The ``AutoModelForCTC`` model (encoder and CTC head), exported as it is."""
        return self.model

    def layer_of(self, name: str) -> Layer | None:
        """Encoder layers by the transformers convention (Parakeet ``encoder.layers.<i>``,
        wav2vec2 ``wav2vec2.encoder.layers.<i>``); the CTC head is in no stack."""
        return transformer_layer(name)

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    def unknown_characters(self, characters: Iterable[str]) -> set[str]:
        """The characters (whitespace aside) that the tokenizer encodes, alone, as its unknown
        token or as nothing: for the character vocabularies of Parakeet and wav2vec2
        (lowercase letters and apostrophe), upper case, digits and symbols."""
        known = self.__dict__.setdefault("_known_characters", {})
        unknown = set()
        for char in characters:
            if char.isspace():
                continue
            if char not in known:
                ids = self.tokenizer(char, add_special_tokens=False)["input_ids"]
                known[char] = bool(ids) and self.tokenizer.unk_token_id not in ids
            if not known[char]:
                unknown.add(char)
        return unknown

    def encode_text(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        unk = self.tokenizer.unk_token_id
        if unk is not None and unk in ids:
            logger.debug("text %r has characters outside the vocabulary", text)
        return torch.LongTensor(ids)

    def features(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's input features for a padded batch (relative lengths as SpeechBrain)."""
        lengths = (wav_lens * wavs.shape[1]).round().long().tolist()
        audio = [w[:n].detach().float().cpu().numpy() for w, n in zip(wavs, lengths)]
        inputs = self.feature_extractor(
            audio, sampling_rate=16000, return_tensors="pt", padding=True, return_attention_mask=True
        )
        return {k: v.to(wavs.device) for k, v in inputs.items()}

    def output_lengths(self, attention_mask: torch.Tensor) -> torch.Tensor:
        lengths = attention_mask.sum(-1)
        for name in ("_get_subsampling_output_length", "_get_feat_extract_output_lengths"):
            fn = getattr(self.model, name, None)
            if fn is not None:
                return fn(lengths).long()
        return lengths

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = self.features(wavs, wav_lens)
        logits = self.model(**inputs).logits
        out_lens = self.output_lengths(inputs["attention_mask"]).clamp(max=logits.shape[1])
        return {"logits": logits, "out_lens": out_lens}

    def encoder_states(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor, up_to: int | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The model's own ``hidden_states`` on the inputs of :meth:`features` (each clip's
        features from its own audio, with the attention mask): index 0 the input of the first
        layer (Parakeet: the subsampling's output, scaled; wav2vec2: the projected features
        with positions), then each layer's output. Valid frames: the model's output lengths
        of the attention mask (as :meth:`forward`'s ``out_lens``)."""
        inputs = self.features(wavs, wav_lens)
        states = _hidden_states_up_to(
            lambda: self.model(**inputs, output_hidden_states=True), self.encoder_layers(), up_to
        )
        valid = self.output_lengths(inputs["attention_mask"]).clamp(min=1, max=states[-1].shape[1])
        return states, valid.to(states[-1].device)

    def loss(self, outputs: dict[str, torch.Tensor], tokens: torch.Tensor, tokens_lens: torch.Tensor) -> torch.Tensor:
        """Mean-over-batch CTC loss, each utterance's loss divided by its target length."""
        log_probs = F.log_softmax(outputs["logits"].float(), dim=-1).transpose(0, 1)
        target_lens = (tokens_lens * tokens.shape[1]).round().long()
        return F.ctc_loss(
            log_probs,
            tokens,
            outputs["out_lens"],
            target_lens,
            blank=self.blank_id,
            reduction="mean",
            zero_infinity=True,
        )

    def prediction_entropy(self, batch: PaddedBatch) -> torch.Tensor:
        """Entropy of the CTC frame posteriors (blank included) over each utterance's frames."""
        outputs = self(*self.batch_inputs(batch))
        return masked_entropy(outputs["logits"], outputs["out_lens"])

    @torch.no_grad()
    def transcribe(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor, outputs: dict[str, torch.Tensor] | None = None
    ) -> list[str]:
        outputs = outputs if outputs is not None else self.forward(wavs, wav_lens)
        best = outputs["logits"].argmax(dim=-1)
        texts = []
        for seq, n in zip(best.tolist(), outputs["out_lens"].tolist()):
            ids, prev = [], None
            for token in seq[:n]:
                if token != prev and token != self.blank_id:
                    ids.append(token)
                prev = token
            # CTC tokenizers (wav2vec2, Parakeet) would collapse repeats again by default
            texts.append(self.tokenizer.decode(ids, skip_special_tokens=True, group_tokens=False).strip())
        return texts

    def export(self, folder: str | os.PathLike, provenance: dict[str, Any] | None = None) -> None:
        os.makedirs(folder, exist_ok=True)
        self.model.save_pretrained(folder)
        self.feature_extractor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        copy_processor_files(self.source, folder, overwrite=False)
        write_provenance(folder, provenance or {})
