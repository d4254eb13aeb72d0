"""The two model families of the paper behind one small interface.

* ``WhisperASR``: attention encoder-decoder (Whisper, paper Table VI), through SpeechBrain's
  ``speechbrain.integrations.huggingface.whisper.Whisper`` wrapper; decoded with
  SpeechBrain's Whisper greedy or beam searchers.
* ``CTCASR``: any transformers ``AutoModelForCTC`` (``ParakeetForCTC``, paper Tables
  III-VIII; wav2vec2, ...) with its own processor; greedy CTC decoding.

Both take a hub id or a local model folder and export a standard transformers folder
(:meth:`export`) that ``from_pretrained`` and ``transformers.pipeline`` load.
"""

import json
import logging
import os
import shutil

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "aode.json"
FAMILIES = ("whisper", "ctc")
_PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
    "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json",
    "processor_config.json", "normalizer.json", "generation_config.json",
    "tokenizer.model", "spm.model",
)


def _looks_local(source):
    return os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source)


def load_config(source):
    """The transformers config of a hub id or folder, with a clear error when missing."""
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


def detect_family(config):
    """'whisper' or 'ctc' from a transformers config; ValueError for anything else."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

    if config.model_type == "whisper":
        return "whisper"
    archs = getattr(config, "architectures", None) or []
    if config.model_type in MODEL_FOR_CTC_MAPPING_NAMES or any(a.endswith("ForCTC") for a in archs):
        return "ctc"
    raise ValueError(
        f"unknown model type {config.model_type!r} (architectures {archs}): AoDE supports "
        "Whisper and CTC models (ParakeetForCTC, AutoModelForCTC)"
    )


def architecture_signature(config):
    """What two models must share to be fine-tuned from one another or averaged."""
    return {"model_type": config.model_type, "vocab_size": getattr(config, "vocab_size", None)}


def check_same_architecture(config, other, what, other_what):
    sig, other_sig = architecture_signature(config), architecture_signature(other)
    if sig != other_sig:
        raise ValueError(f"{what} has architecture {sig} but {other_what} has {other_sig}")


def load_asr_model(source, family=None, **kwargs):
    """Load ``source`` (hub id or folder) as a ``WhisperASR`` or ``CTCASR``.

    ``family`` (``"whisper"``/``"ctc"``), when given, must match the checkpoint.
    """
    config = load_config(source)
    found = detect_family(config)
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {FAMILIES}")
    if family is not None and family != found:
        raise ValueError(f"hparams say model family {family!r} but {source!r} is a {found} model")
    cls = WhisperASR if found == "whisper" else CTCASR
    return cls(str(source), **kwargs)


def write_provenance(folder, info):
    with open(os.path.join(folder, PROVENANCE_FILE), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, default=str)


def read_provenance(folder):
    """A model folder's ``aode.json``; None when it has none or it cannot be read."""
    path = os.path.join(folder, PROVENANCE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        logger.warning("unreadable provenance file %s", path)
        return None


class WhisperASR(nn.Module):
    """Whisper through SpeechBrain's wrapper; cross-entropy training, S2S searchers.

    Training targets are the raw cased, punctuated text (``wrd_raw``) tokenised with the
    model's own tokenizer and framed by its prefix tokens and end-of-text.
    """

    family = "whisper"
    text_field = "wrd_raw"

    def __init__(self, source, save_path=None, language=None, task="transcribe",
                 beam_size=1, max_decode_ratio=1.0, label_smoothing=0.0):
        super().__init__()
        from speechbrain.integrations.huggingface.whisper import Whisper

        self.source = source
        save_path = save_path or os.path.join(os.path.expanduser("~"), ".cache", "aode")
        self.whisper = Whisper(source, save_path, sampling_rate=16000, language=language, task=task)
        self.label_smoothing = label_smoothing
        self.beam_size = beam_size
        self.max_decode_ratio = max_decode_ratio
        self._searcher = None

    @property
    def hf_model(self):
        return self.whisper.model

    @property
    def config(self):
        return self.whisper.model.config

    @property
    def tokenizer(self):
        return self.whisper.tokenizer

    def encode_text(self, text):
        """(tokens_bos, tokens_eos) LongTensors for teacher forcing."""
        ids = self.tokenizer.encode(" " + text.strip(), add_special_tokens=False)
        full = list(self.tokenizer.prefix_tokens) + ids + [self.whisper.eos]
        return torch.LongTensor(full[:-1]), torch.LongTensor(full[1:])

    def forward(self, wavs, wav_lens, tokens_bos):
        enc, logits, _ = self.whisper(wavs, tokens_bos)
        return {"encoder_out": enc, "logits": logits}

    def loss(self, outputs, tokens_eos, tokens_eos_lens):
        import speechbrain as sb

        log_probs = F.log_softmax(outputs["logits"], dim=-1)
        return sb.nnet.losses.nll_loss(
            log_probs, tokens_eos, length=tokens_eos_lens, label_smoothing=self.label_smoothing
        )

    def _get_searcher(self):
        if self._searcher is None:
            from speechbrain.decoders.seq2seq import S2SWhisperBeamSearcher, S2SWhisperGreedySearcher

            if self.beam_size > 1:
                self._searcher = S2SWhisperBeamSearcher(
                    module=[self.whisper], min_decode_ratio=0.0,
                    max_decode_ratio=self.max_decode_ratio, beam_size=self.beam_size,
                )
            else:
                self._searcher = S2SWhisperGreedySearcher(
                    model=self.whisper, min_decode_ratio=0.0, max_decode_ratio=self.max_decode_ratio,
                )
        return self._searcher

    @torch.no_grad()
    def transcribe(self, wavs, wav_lens, encoder_out=None):
        if encoder_out is None:
            encoder_out = self.whisper.forward_encoder(self.whisper._get_mel(wavs))
        hyps = self._get_searcher()(encoder_out.detach(), wav_lens)[0]
        return [self.tokenizer.decode(h, skip_special_tokens=True).strip() for h in hyps]

    def export(self, folder, provenance=None):
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
        _copy_extra_files(self.source, folder)
        write_provenance(folder, provenance or {})


class CTCASR(nn.Module):
    """Any transformers CTC model with its processor; greedy CTC decoding.

    Training targets are ``wrd`` (lowercase, apostrophes kept), the text form of
    Parakeet's and wav2vec2's character/subword vocabularies.
    """

    family = "ctc"
    text_field = "wrd"

    def __init__(self, source, save_path=None, **unused):
        super().__init__()
        from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoTokenizer

        self.source = source
        self.model = AutoModelForCTC.from_pretrained(source, cache_dir=save_path)
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(source, cache_dir=save_path)
        self._tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=save_path)
        self.blank_id = self.model.config.pad_token_id
        if self.blank_id is None:
            raise ValueError(f"CTC model {source!r} defines no pad_token_id (its blank)")

    @property
    def hf_model(self):
        return self.model

    @property
    def config(self):
        return self.model.config

    @property
    def tokenizer(self):
        return self._tokenizer

    def encode_text(self, text):
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        unk = self.tokenizer.unk_token_id
        if unk is not None and unk in ids:
            logger.debug("text %r has characters outside the vocabulary", text)
        return torch.LongTensor(ids)

    def features(self, wavs, wav_lens):
        """The model's input features for a padded batch (relative lengths as SpeechBrain)."""
        lengths = (wav_lens * wavs.shape[1]).round().long().tolist()
        audio = [w[:n].detach().float().cpu().numpy() for w, n in zip(wavs, lengths)]
        inputs = self.feature_extractor(
            audio, sampling_rate=16000, return_tensors="pt", padding=True, return_attention_mask=True
        )
        return {k: v.to(wavs.device) for k, v in inputs.items()}

    def output_lengths(self, attention_mask):
        lengths = attention_mask.sum(-1)
        for name in ("_get_subsampling_output_length", "_get_feat_extract_output_lengths"):
            fn = getattr(self.model, name, None)
            if fn is not None:
                return fn(lengths).long()
        return lengths

    def forward(self, wavs, wav_lens):
        inputs = self.features(wavs, wav_lens)
        logits = self.model(**inputs).logits
        out_lens = self.output_lengths(inputs["attention_mask"]).clamp(max=logits.shape[1])
        return {"logits": logits, "out_lens": out_lens}

    def loss(self, outputs, tokens, tokens_lens):
        """Mean-over-batch CTC loss, each utterance's loss divided by its target length."""
        log_probs = F.log_softmax(outputs["logits"].float(), dim=-1).transpose(0, 1)
        target_lens = (tokens_lens * tokens.shape[1]).round().long()
        return F.ctc_loss(
            log_probs, tokens, outputs["out_lens"], target_lens, blank=self.blank_id,
            reduction="mean", zero_infinity=True,
        )

    @torch.no_grad()
    def transcribe(self, wavs, wav_lens, outputs=None):
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

    def export(self, folder, provenance=None):
        os.makedirs(folder, exist_ok=True)
        self.model.save_pretrained(folder)
        self.feature_extractor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        _copy_extra_files(self.source, folder)
        write_provenance(folder, provenance or {})


def _copy_extra_files(source, folder):
    """Processor files of a local source that the save_pretrained calls did not write."""
    if not os.path.isdir(source):
        return
    for name in _PROCESSOR_FILES:
        src, dst = os.path.join(source, name), os.path.join(folder, name)
        if os.path.isfile(src) and not os.path.exists(dst):
            shutil.copy2(src, dst)
