"""The shared Brain: training lowers the loss, clipping covers every group, export matches."""

import pytest
import speechbrain as sb
import torch

from aode.brain import ASRBrain
from aode.config import BrainConfig
from aode.data import make_dataset
from aode.models import load_asr_model
from aode.schedule import STLR


def _brain(asr, max_grad_norm=5.0, lr=3e-3, total_steps=100):
    return ASRBrain(
        {"model": asr},
        BrainConfig(lr=lr, llrd_alpha=0.9),
        run_opts={"device": "cpu", "max_grad_norm": max_grad_norm},
        scheduler=STLR(total_steps, 0.1),
    )


def _batch(asr, manifest, n=4):
    data = make_dataset(manifest, asr)
    return sb.dataio.batch.PaddedBatch([data[i] for i in range(n)])


@pytest.mark.parametrize("family,steps,lr", [("ctc", 25, 3e-3), ("whisper", 10, 1e-2)])
def test_a_few_steps_lower_the_loss(family, steps, lr, tiny_parakeet, tiny_whisper, sample_manifest):
    torch.manual_seed(0)
    asr = load_asr_model(tiny_parakeet if family == "ctc" else tiny_whisper)
    brain = _brain(asr, lr=lr, total_steps=steps)
    brain.on_fit_start()
    batch = _batch(asr, sample_manifest, 3)
    brain.modules.eval()  # no dropout: compare like with like
    with torch.no_grad():
        before = brain.compute_objectives(brain.compute_forward(batch, sb.Stage.TRAIN), batch, sb.Stage.TRAIN)
    brain.modules.train()
    for _ in range(steps):
        brain.fit_batch(batch)
    brain.modules.eval()
    with torch.no_grad():
        after = brain.compute_objectives(brain.compute_forward(batch, sb.Stage.TRAIN), batch, sb.Stage.TRAIN)
    assert after < 0.8 * before


def test_clipping_covers_every_group(tiny_parakeet, sample_manifest, monkeypatch):
    asr = load_asr_model(tiny_parakeet)
    brain = _brain(asr, max_grad_norm=1e-3)
    brain.on_fit_start()
    assert len(brain.optimizer.param_groups) > 1
    norms = {}

    def record(opt):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms["total"] = torch.norm(torch.stack([g.norm() for g in grads])).item()
        norms["outside_group0"] = torch.norm(
            torch.stack([p.grad.norm() for g in opt.param_groups[1:] for p in g["params"] if p.grad is not None])
        ).item()

    monkeypatch.setattr(brain.scaler, "step", record)
    brain.fit_batch(_batch(asr, sample_manifest, 2))
    assert norms["total"] <= 1e-3 * 1.0001
    assert norms["outside_group0"] > 0


def test_validation_scores_and_writes_utterances(tiny_parakeet, sample_manifest, tmp_path):
    asr = load_asr_model(tiny_parakeet)
    brain = _brain(asr)
    brain.utterance_output = str(tmp_path / "utts.csv")
    data = make_dataset(sample_manifest, asr)
    brain.evaluate(data, test_loader_kwargs={"batch_size": 4}, progressbar=False)
    assert brain.last_stats["WER"] >= 0
    lines = (tmp_path / "utts.csv").read_text().splitlines()
    assert lines[0] == "ID,errors,words,ref,hyp" and len(lines) == 11
    assert (tmp_path / "utts_alignments.txt").exists()


def test_exported_ctc_expert_gives_the_brains_logits(tiny_parakeet, sample_manifest, tmp_path):
    from transformers import AutoProcessor
    from transformers import ParakeetForCTC

    asr = load_asr_model(tiny_parakeet)
    brain = _brain(asr)
    brain.on_fit_start()
    batch = _batch(asr, sample_manifest, 2)
    brain.fit_batch(batch)
    asr.eval()
    asr.export(str(tmp_path / "expert"), {"kind": "expert"})
    with torch.no_grad():
        ours = asr(*batch.sig)["logits"]
        plain = ParakeetForCTC.from_pretrained(str(tmp_path / "expert")).eval()
        processor = AutoProcessor.from_pretrained(str(tmp_path / "expert"))
        wavs, lens = batch.sig
        ns = [int(round(x * wavs.shape[1])) for x in lens.tolist()]
        inputs = processor([w[:n].numpy() for w, n in zip(wavs, ns)], sampling_rate=16000)
        theirs = plain(**inputs).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_exported_whisper_expert_gives_the_brains_logits(tiny_whisper, sample_manifest, tmp_path):
    from transformers import WhisperForConditionalGeneration

    asr = load_asr_model(tiny_whisper)
    batch = _batch(asr, sample_manifest, 2)
    with torch.no_grad():
        asr.hf_model.encoder.layers[0].fc1.weight.add_(0.01)  # differ from the source
    asr.eval()
    asr.export(str(tmp_path / "expert"))
    plain = WhisperForConditionalGeneration.from_pretrained(str(tmp_path / "expert")).eval()
    wavs, lens = batch.sig
    tokens, _ = batch.tokens_bos
    with torch.no_grad():
        ours = asr(wavs, lens, tokens)["logits"]
        mel = asr.whisper._get_mel(wavs)
        theirs = plain(input_features=mel, decoder_input_ids=tokens).logits
    assert torch.allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_whisper_greedy_and_beam_decoding(tiny_whisper, sample_manifest, beam_size):
    asr = load_asr_model(tiny_whisper, beam_size=beam_size, max_decode_ratio=0.02).eval()
    batch = _batch(asr, sample_manifest, 2)
    texts = asr.transcribe(*batch.sig)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    searcher = type(asr._get_searcher()).__name__
    assert searcher == ("S2SWhisperBeamSearcher" if beam_size > 1 else "S2SWhisperGreedySearcher")
