"""Build small models from configs, offline: the miniature's generalist and test models.

Nothing here downloads: a character tokenizer is built with ``tokenizers``; a Whisper
tokenizer with the real GPT-2/Whisper vocabulary is built from the tiktoken file that the
``openai-whisper`` package ships.
"""

from __future__ import annotations

import json
import os
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

from transformers.models.whisper.tokenization_whisper import LANGUAGES

if TYPE_CHECKING:
    from transformers import ParakeetTokenizer
    from transformers import WhisperTokenizer

CHARACTERS = list(string.ascii_lowercase) + ["'"]
BLANK = "<blank>"
UNK = "<unk>"
WORD_BOUNDARY = "\u2581"


def char_tokenizer(characters: Sequence[str] = CHARACTERS) -> ParakeetTokenizer:
    """A ``ParakeetTokenizer`` over single characters, SentencePiece style (``▁`` starts a
    word), blank last as in Parakeet's vocabularies; the blank is the pad token."""
    from tokenizers import Tokenizer
    from tokenizers import decoders
    from tokenizers import models
    from tokenizers import pre_tokenizers
    from transformers import ParakeetTokenizer

    pieces = [UNK, WORD_BOUNDARY] + list(characters) + [BLANK]
    vocab = [(p, 0.0 if p in (UNK, BLANK) else -1.0) for p in pieces]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always")
    return ParakeetTokenizer(tokenizer_object=tok, unk_token=UNK, pad_token=BLANK)


def build_parakeet_ctc(
    folder: str | os.PathLike,
    hidden_size: int = 144,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 576,
    subsampling_factor: int = 2,
    conv_kernel_size: int = 15,
    num_mel_bins: int = 80,
    seed: int = 0,
    characters: Sequence[str] = CHARACTERS,
) -> str | os.PathLike:
    """A freshly initialised ``ParakeetForCTC`` with a character tokenizer, saved to ``folder``
    with its processor; returns the folder."""
    import torch
    from transformers import ParakeetCTCConfig
    from transformers import ParakeetEncoderConfig
    from transformers import ParakeetFeatureExtractor
    from transformers import ParakeetForCTC
    from transformers import ParakeetProcessor

    tokenizer = char_tokenizer(characters)
    encoder = ParakeetEncoderConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        subsampling_factor=subsampling_factor,
        subsampling_conv_channels=hidden_size,
        conv_kernel_size=conv_kernel_size,
        num_mel_bins=num_mel_bins,
        dropout=0.1,
        dropout_positions=0.0,
        layerdrop=0.0,
        activation_dropout=0.1,
        attention_dropout=0.1,
    )
    config = ParakeetCTCConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        encoder_config=encoder.to_dict(),
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )
    torch.manual_seed(seed)
    model = ParakeetForCTC(config)
    model.config.architectures = ["ParakeetForCTC"]
    model.save_pretrained(folder)
    processor = ParakeetProcessor(ParakeetFeatureExtractor(feature_size=num_mel_bins), tokenizer)
    processor.save_pretrained(folder)
    return folder


def whisper_tokenizer(folder: str | os.PathLike) -> WhisperTokenizer:
    """The English-only Whisper tokenizer (GPT-2 BPE + Whisper's special tokens, 51864 ids
    as in whisper-small.en), built offline from openai-whisper's ``gpt2.tiktoken``."""
    import whisper
    from transformers import WhisperTokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = os.path.join(os.path.dirname(whisper.__file__), "assets", "gpt2.tiktoken")
    vocab, merges = TikTokenConverter(path).extract_vocab_merges_from_model(path)
    os.makedirs(folder, exist_ok=True)
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges))
    eot = "<|endoftext|>"
    tok = WhisperTokenizer(vocab_file, merges_file, unk_token=eot, bos_token=eot, eos_token=eot, pad_token=eot)
    languages = [f"<|{code}|>" for code in list(LANGUAGES)[:99]]  # .en models: 99 languages
    specials = (
        ["<|startoftranscript|>"]
        + languages
        + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    )
    tok.add_tokens(specials, special_tokens=True)
    tok.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    os.remove(vocab_file)
    os.remove(merges_file)
    return tok


def build_whisper(
    folder: str | os.PathLike, d_model: int = 64, layers: int = 2, heads: int = 2, ffn: int = 128, seed: int = 0
) -> str | os.PathLike:
    """A freshly initialised small ``WhisperForConditionalGeneration`` with the real
    English-only vocabulary and Whisper's feature extractor (80 mel bins, 30 s input)."""
    import torch
    from transformers import WhisperConfig
    from transformers import WhisperFeatureExtractor
    from transformers import WhisperForConditionalGeneration

    tokenizer = whisper_tokenizer(folder)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder
