"""The shared pipeline: a segment of a file, a mixed multi-file row, resampling to 16 kHz."""

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from conftest import SAMPLES

from aode.data import read_audio_segment
from aode.manifest import WAV_SEPARATOR


def _speech(name="spk1_snt1"):
    data, rate = sf.read(f"{SAMPLES}/speech/{name}.wav", dtype="float32")
    assert rate == 16000
    return torch.from_numpy(data)


def test_segment_of_a_441_khz_stereo_file(tmp_path):
    speech = _speech()
    up = torchaudio.functional.resample(speech, 16000, 44100)
    stereo = torch.stack([up, 0.5 * up], dim=1).numpy()
    path = tmp_path / "a.wav"
    sf.write(path, stereo, 44100, subtype="PCM_16")
    seg = read_audio_segment(str(path), 0.5, 1.75)
    assert seg.dim() == 1 and seg.dtype == torch.float32
    assert abs(len(seg) - 1.25 * 16000) <= 1
    reference = 0.75 * speech[8000:28000]
    assert torch.corrcoef(torch.stack([seg[: len(reference)], reference]))[0, 1] > 0.99


def test_mixed_multi_file_row_is_the_sum(tmp_path):
    a, b = _speech("spk1_snt1"), _speech("spk2_snt1")
    n = min(len(a), len(b))
    for name, x in (("p1.wav", a), ("p2.wav", b)):
        sf.write(tmp_path / name, x.numpy()[:n], 48000 if name == "p2.wav" else 16000)
    # p2 claims 48 kHz: the loader must read the rate from the file and resample
    row = f"{tmp_path / 'p1.wav'}{WAV_SEPARATOR}{tmp_path / 'p2.wav'}"
    mixed = read_audio_segment(row, 0.0, 0.5)
    assert len(mixed) == 8000
    expected = a[:8000] + torchaudio.functional.resample(b[:24000], 48000, 16000)[:8000]
    assert torch.allclose(mixed, expected, atol=2e-3)


def test_segment_outside_the_file_fails_clearly(tmp_path):
    path = tmp_path / "s.wav"
    sf.write(path, np.zeros(16000, dtype="float32"), 16000)
    assert len(read_audio_segment(str(path), 0, 1.004)) == 16000  # millisecond rounding tolerated
    with pytest.raises(ValueError, match="outside"):
        read_audio_segment(str(path), 0.5, 1.5)


def test_one_end_tolerance_for_the_check_and_the_reader(tmp_path):
    """A row 30 ms past the end of its file passes the manifest check and is read (the reader
    used to allow 10 ms while the check allowed 50, so such a row failed mid-training)."""
    import numpy as np
    import soundfile as sf

    from aode.data import END_TOLERANCE_SECONDS
    from aode.data import check_manifest
    from aode.data import read_audio_segment
    from aode.manifest import write_manifest

    wav = str(tmp_path / "a.wav")
    sf.write(wav, np.zeros(16000, dtype="float32"), 16000)
    stop = 1.0 + 0.03
    assert 0.03 < END_TOLERANCE_SECONDS
    write_manifest(
        str(tmp_path / "m.csv"),
        [
            {
                "ID": "u",
                "duration": stop,
                "wav": wav,
                "start": 0.0,
                "stop": stop,
                "spk_id": "s",
                "wrd": "a",
                "wrd_raw": "a",
            }
        ],
    )
    rows, bad = check_manifest(str(tmp_path / "m.csv"))
    assert not bad
    assert len(read_audio_segment(wav, 0.0, stop)) == 16000
