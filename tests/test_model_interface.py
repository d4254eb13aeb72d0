"""One model interface: nothing outside aode/models.py branches on the model family, and a
third family is one new class (here a tiny Speech2Text attention encoder-decoder, the shape
of a Canary-style AED) that trains, decodes and exports through the unchanged Brain."""

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


class Speech2TextASR(ASRModel):
    """A third family in ~50 lines: transformers' Speech2Text AED, character targets."""

    family = "s2t"
    text_field = "wrd"
    text_keys = ("tokens_bos", "tokens_eos")

    @classmethod
    def handles(cls, config):
        return config.model_type == "speech_to_text"

    def __init__(self, source, **decoding_options):
        super().__init__()
        from transformers import Speech2TextForConditionalGeneration

        self.model = Speech2TextForConditionalGeneration.from_pretrained(source)
        self.mel = __import__("torchaudio").transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=80)

    @property
    def hf_model(self):
        return self.model

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


def test_a_third_family_needs_one_class(s2t_family, sample_manifest, tmp_path):
    from transformers import Speech2TextConfig
    from transformers import Speech2TextForConditionalGeneration

    from aode.train import train_expert

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
    assert isinstance(load_asr_model(source), Speech2TextASR)

    folder = train_expert(
        dict(
            output_folder=str(tmp_path / "run"),
            train_csv=sample_manifest,
            valid_csv=sample_manifest,
            test_csv=sample_manifest,
            model_source=source,
            lr=1e-3,
            llrd_alpha=0.9,
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
