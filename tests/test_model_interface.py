"""One model interface: nothing outside aode/models.py branches on the model family, each
interface method gives what callers relied on for Whisper and CTC, and a third family is one
new class (here a tiny Speech2Text attention encoder-decoder, the shape of a Canary-style AED)
that trains (LLRD, frozen decoder), decodes, exports and gets a Fisher through the unchanged
Brain, with the transformers naming convention of aode.models out of reach."""

import json
import os
import re

import pytest
import torch
import torch.nn.functional as F

from aode.models import FAMILIES
from aode.models import ASRModel
from aode.models import load_asr_model
from aode.models import register_family
from aode.models import write_provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILY_BRANCH = re.compile(
    r"\.family\s*[!=]=|\bfamily\s*[!=]=\s*['\"]|isinstance\([^)]*\b(WhisperASR|CTCASR)\b"
    r"|\b(WhisperASR|CTCASR)\b\s*\("
)


def test_nothing_outside_models_branches_on_family():
    offenders = []
    for top in ("aode", "recipes", "bench", "data_prep"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                path = os.path.join(folder, name)
                if not name.endswith(".py") or path == os.path.join(ROOT, "aode", "models.py"):
                    continue
                for number, line in enumerate(open(path, encoding="utf-8"), 1):
                    if FAMILY_BRANCH.search(line):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_guard_catches_a_branch():
    assert FAMILY_BRANCH.search('if self.asr.family == "whisper":')
    assert FAMILY_BRANCH.search("isinstance(model, (WhisperASR, CTCASR))")
    assert not FAMILY_BRANCH.search("family = 'whisper'")


CHARS = list(" abcdefghijklmnopqrstuvwxyz'")
PAD, BOS, EOS = 0, 1, 2  # then the characters


def test_interface_of_whisper_and_ctc(tiny_whisper, tiny_parakeet):
    """What LLRD, the frozen-decoder baseline, Fisher/Gram/AdaMerging/RegMean++ and the
    option filter get from each family, on the tiny test models."""
    from aode.member_statistics import tensor_names

    whisper = load_asr_model(tiny_whisper)
    hf = whisper.hf_model
    assert type(hf).__name__ == "WhisperModel" and hf is whisper.whisper.model
    assert whisper.layer_of("encoder.layers.1.fc1.weight") == ("encoder", 1)
    assert whisper.layer_of("decoder.layers.0.encoder_attn.k_proj.weight") == ("decoder", 0)
    assert whisper.layer_of("decoder.embed_tokens.weight") == ("decoder", None)
    assert whisper.layer_of("encoder.conv1.weight") == ("encoder", None)
    encoder = {id(p) for p in whisper.encoder_parameters()}
    assert encoder == {id(p) for n, p in hf.named_parameters() if n.startswith("encoder.")}
    assert whisper.stored_name("encoder.conv1.weight") == "model.encoder.conv1.weight"
    stored = tensor_names(tiny_whisper)
    names = whisper.stored_names(stored)
    assert set(names) == {n for n, _ in hf.named_parameters()}
    assert all(v == f"model.{k}" for k, v in names.items()) and set(names.values()) <= stored
    assert whisper.stored_names({"encoder.conv1.weight"}) == {"encoder.conv1.weight": "encoder.conv1.weight"}
    assert whisper.hf_names()["whisper.model.encoder.conv1.weight"] == "encoder.conv1.weight"
    assert len(whisper.hf_names()) == len(list(whisper.parameters()))
    assert {"beam_size", "max_decode_ratio", "label_smoothing", "layerdrop"} <= set(whisper.option_names)

    ctc = load_asr_model(tiny_parakeet, beam_size=4, max_decode_ratio=0.5)  # Whisper's options: not passed on
    hf = ctc.hf_model
    assert hf is ctc.model and type(hf).__name__ == "ParakeetForCTC"
    assert ctc.layer_of("encoder.layers.1.self_attn.q_proj.weight") == ("encoder", 1)
    assert ctc.layer_of("encoder.subsampling.linear.weight") == ("encoder", None)
    assert ctc.layer_of("ctc_head.weight") is None
    assert {id(p) for p in ctc.encoder_parameters()} == {id(p) for p in hf.encoder.parameters()}
    assert ctc.stored_names(tensor_names(tiny_parakeet)) == {n: n for n, _ in hf.named_parameters()}
    assert ctc.option_names == ("layerdrop",)
    with pytest.raises(TypeError):
        type(ctc)(tiny_parakeet, beam_size=4)  # the CTC family takes only its own options
    with pytest.raises(TypeError, match="unknown model options"):
        load_asr_model(tiny_parakeet, beam_sise=4)


def test_frozen_decoder_and_llrd_through_the_interface(tiny_whisper):
    from aode.llrd import model_param_groups
    from aode.train import freeze_non_encoder

    asr = load_asr_model(tiny_whisper)
    freeze_non_encoder(asr)
    trainable = {n for n, p in asr.hf_model.named_parameters() if p.requires_grad}
    # the encoder's fixed sinusoidal positions stay frozen (freeze_fixed_parameters)
    assert trainable == {n for n, _ in asr.hf_model.named_parameters() if n.startswith("encoder.")} - {
        "encoder.embed_positions.weight"
    }
    groups = model_param_groups(asr, lr=1.0, alpha=0.5)
    assert {g["name"]: g["lr_scale"] for g in groups} == {"encoder.layer0": 0.5, "encoder.layer1": 1.0, "other": 0.5}


class Speech2TextASR(ASRModel):
    """A third family in ~75 lines: transformers' Speech2Text AED, character targets. Its
    ``hf_model`` is the ``Speech2TextModel`` inside the exported ``...ForConditionalGeneration``
    (stored as ``model.<name>``), its own group matcher places the layers."""

    family = "s2t"
    text_field = "wrd"
    text_keys = ("tokens_bos", "tokens_eos")
    LAYER = re.compile(r"(encoder|decoder)\.(?:layers\.(\d+)\.)?")

    @classmethod
    def handles(cls, config):
        return config.model_type == "speech_to_text"

    def __init__(self, source, save_path=None):  # no options: greedy decoding, plain cross-entropy
        super().__init__()
        from transformers import Speech2TextForConditionalGeneration

        self.model = Speech2TextForConditionalGeneration.from_pretrained(source)
        self.mel = __import__("torchaudio").transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80)

    @property
    def hf_model(self):
        return self.model.model

    def layer_of(self, name):
        match = self.LAYER.match(name)
        return None if match is None else (match.group(1), None if match.group(2) is None else int(match.group(2)))

    def encoder_parameters(self):
        return self.hf_model.get_encoder().parameters()

    def stored_name(self, name):
        return f"model.{name}"

    def text_items(self, text):
        ids = [3 + CHARS.index(c) for c in text if c in CHARS]
        return torch.LongTensor([BOS] + ids), torch.LongTensor(ids + [EOS])

    def batch_inputs(self, batch):
        return (*batch.sig, batch.tokens_bos[0])

    def batch_targets(self, batch):
        return batch.tokens_eos

    def _encode(self, wavs, wav_lens):
        feats = (self.mel(wavs) + 1e-6).log().transpose(1, 2)
        mask = (torch.arange(feats.shape[1])[None] < (wav_lens * feats.shape[1]).ceil()[:, None]).long()
        return feats, mask

    def forward(self, wavs, wav_lens, tokens_bos):
        feats, mask = self._encode(wavs, wav_lens)
        return {"logits": self.model(input_features=feats, attention_mask=mask, decoder_input_ids=tokens_bos).logits}

    def loss(self, outputs, tokens, tokens_lens):
        keep = torch.arange(tokens.shape[1])[None] < (tokens_lens * tokens.shape[1]).round()[:, None]
        return F.cross_entropy(outputs["logits"][keep], tokens[keep])

    @torch.no_grad()
    def transcribe(self, wavs, wav_lens):
        feats, mask = self._encode(wavs, wav_lens)
        ids = torch.full((len(wavs), 1), BOS)
        for _ in range(8):
            logits = self.model(input_features=feats, attention_mask=mask, decoder_input_ids=ids).logits
            ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
        return ["".join(CHARS[i - 3] for i in row[1:].tolist() if i >= 3) for row in ids]

    def transcribe_outputs(self, outputs, batch):
        return self.transcribe(*batch.sig)

    def export(self, folder, provenance=None):
        self.model.save_pretrained(folder)
        write_provenance(folder, provenance or {})


@pytest.fixture
def s2t_family():
    register_family(Speech2TextASR)
    yield
    FAMILIES.pop("s2t")


def test_a_third_family_needs_one_class(s2t_family, sample_manifest, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    from transformers import Speech2TextConfig
    from transformers import Speech2TextForConditionalGeneration

    import aode.models
    from aode.fisher import estimate_fisher
    from aode.llrd import model_param_groups
    from aode.member_statistics import tensor_names
    from aode.train import train_expert

    def convention(name):
        raise AssertionError(f"the convention of aode.models was asked about {name!r}, not the family")

    monkeypatch.setattr(aode.models, "transformer_layer", convention)

    config = Speech2TextConfig(
        vocab_size=3 + len(CHARS),
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        conv_channels=32,
        input_feat_per_channel=80,
        max_source_positions=1500,
        max_target_positions=256,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
    )
    torch.manual_seed(0)
    source = str(tmp_path / "s2t")
    Speech2TextForConditionalGeneration(config).save_pretrained(source)
    asr = load_asr_model(source, beam_size=4, layerdrop=0.0)  # other families' options: not passed on
    assert isinstance(asr, Speech2TextASR)
    groups = {g["name"]: g["lr_scale"] for g in model_param_groups(asr, lr=1.0, alpha=0.5, mode="separate")}
    layers = {"encoder.layer0": 0.5, "encoder.layer1": 1.0, "decoder.layer0": 0.5, "decoder.layer1": 1.0}
    assert groups == {**layers, "decoder.other": 0.5, "other": 0.5}
    del asr

    folder = train_expert(
        dict(
            output_folder=str(tmp_path / "run"),
            train_csv=sample_manifest,
            valid_csv=sample_manifest,
            test_csv=sample_manifest,
            model_source=source,
            lr=1e-3,
            llrd_alpha=0.9,
            freeze_decoder=True,
            number_of_epochs=1,
            steps_per_epoch=2,
            batch_size=2,
            progressbar=False,
            normalizer="basic",
        )
    )
    info = json.load(open(os.path.join(folder, "aode.json")))
    assert info["kind"] == "expert" and info["dev_wer"] is not None
    assert os.path.isfile(tmp_path / "run" / "test_test.csv")
    assert isinstance(load_asr_model(folder), Speech2TextASR)
    before, after = (load_file(os.path.join(f, "model.safetensors")) for f in (source, folder))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.encoder.") for k in changed)  # the decoder stayed frozen

    fisher = estimate_fisher(folder, sample_manifest, n_utterances=2, batch_size=2, progress=False)
    assert set(fisher) == tensor_names(folder)  # every stored weight, named as stored
