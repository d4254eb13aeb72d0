"""Miniature copies of SPGISpeech, CORAAL and DiPCo for the data-prep tests.

Every fixture uses the corpus's real folder and file names, headers and formats, and audio
made from the real recordings in ``tests/data/samples/speech`` at the corpus's own sample
rate. Each builder returns a dict describing what it wrote, for the tests' expectations.
"""

import csv
import functools
import json
import os

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "samples")


@functools.lru_cache(maxsize=None)
def sample(name, rate=16000):
    """The real recording ``name`` (e.g. "spk1_snt1") as float32 at ``rate`` Hz."""
    audio, sr = sf.read(os.path.join(SAMPLES, "speech", name + ".wav"), dtype="float32")
    assert sr == 16000
    if rate != sr:
        g = np.gcd(rate, sr)
        audio = resample_poly(audio, rate // g, sr // g).astype("float32")
    return audio


@functools.lru_cache(maxsize=None)
def transcripts():
    """``{sample id: transcript (uppercase)}`` from speech.csv."""
    with open(os.path.join(SAMPLES, "speech.csv"), newline="") as f:
        return {row["ID"]: row["wrd"] for row in csv.DictReader(f)}


def sentence(name):
    """The sample's transcript in sentence case with a full stop."""
    text = transcripts()[name].lower()
    return text[0].upper() + text[1:] + "."


def place(total_seconds, rate, pieces):
    """A recording of ``total_seconds`` holding each ``(sample, start s)`` of ``pieces``."""
    out = np.zeros(int(round(total_seconds * rate)), dtype="float32")
    for name, start in pieces:
        audio = sample(name, rate)
        i = int(round(start * rate))
        out[i : i + len(audio)] += audio[: len(out) - i]
    return np.clip(out, -1, 1)


def write_wav(path, audio, rate):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio, rate, subtype="PCM_16")
    return path


def truncate(path, keep_fraction=0.5):
    """Cut the file short, leaving its header promising the full length."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep_fraction))


# --------------------------------------------------------------------------------------
# SPGISpeech: spgispeech/{train,val}/<call id>/<n>.wav + {train,val}.csv ("|", 16 kHz)

CALLS = {
    "train": {
        "13aa6c0669adb5544a0d62beef677189": ["spk1_snt1", "spk1_snt2", "spk1_snt3"],
        "7f1b2c3d4e5f60718293a4b5c6d7e8f9": ["spk2_snt1", "spk2_snt2", "spk2_snt3"],
        "0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d": ["spk1_snt4", "spk2_snt4"],
    },
    "val": {
        "fedcba9876543210fedcba9876543210": ["spk1_snt5", "spk2_snt5", "spk2_snt1"],
        "00112233445566778899aabbccddeeff": ["spk1_snt1", "spk1_snt2"],
    },
}


# SPGISpeech's text is fully formatted: amounts keep their "$" (which SpeechBrain's CSV
# reader takes for a variable), quarters are "Q2", dashes "--".
SPGI_ENDINGS = (", up $5 million in Q2 -- next year.", ", or $0.25 a share in Q2 -- next year.")


def make_spgispeech(root, with_level=True, kensho=False):
    """Write a mini SPGISpeech; returns ``{"root", "csv_dir", "audio_dir" (the folder with
    train/ and val/), "good": {split: {ID: row}}, "missing": ID, "empty": ID}``.

    Layouts: ``kensho=True`` is Kensho's download as lhotse and ESPnet egs3 read it,
    ``root/{train,val}.csv`` beside ``root/spgispeech/{train,val}/``; otherwise the CSVs sit
    in the folder with ``train/`` and ``val/`` (icefall, ESPnet egs2), which is
    ``root/spgispeech/`` (``with_level``) or ``root`` itself.
    Besides the good rows, train.csv lists a missing file and a row with an empty
    transcript, val.csv a truncated file (caught only with check_audio) and the good rows
    carry SPGISpeech-style formatting ("$5 million", "Q2", "--", casing).
    """
    base = os.path.join(root, "spgispeech") if with_level or kensho else root
    csv_dir = root if kensho else base
    good = {"train": {}, "val": {}}
    for split, calls in CALLS.items():
        lines = ["wav_filename|wav_filesize|transcript"]
        for call, names in calls.items():
            for n, name in enumerate(names, start=1):
                rel = f"{call}/{n * 25}.wav"
                path = write_wav(os.path.join(base, split, rel), sample(name), 16000)
                size = os.path.getsize(path)
                text = sentence(name).replace(".", SPGI_ENDINGS[n % 2])
                lines.append(f"{rel}|{size}|{text}")
                good[split][f"spgi_{call}_{n * 25}"] = {
                    "wav": os.path.abspath(path),
                    "size": size,
                    "text": text,
                    "spk": call,
                    "duration": len(sample(name)) / 16000,
                }
        if split == "train":
            lines.append("13aa6c0669adb5544a0d62beef677189/999.wav|64044|This file is missing.")
            rel = "13aa6c0669adb5544a0d62beef677189/1000.wav"
            path = write_wav(os.path.join(base, split, rel), sample("spk2_snt2"), 16000)
            lines.append(f"{rel}|{os.path.getsize(path)}|  ")
        else:
            rel = "00112233445566778899aabbccddeeff/300.wav"
            path = write_wav(os.path.join(base, split, rel), sample("spk2_snt3"), 16000)
            size = os.path.getsize(path)
            truncate(path)
            lines.append(f"{rel}|{size}|Tear thin sheep from the other pat.")
            good["truncated"] = {
                "ID": "spgi_00112233445566778899aabbccddeeff_300",
                "size": size,
                "wav": os.path.abspath(path),
            }
        with open(os.path.join(csv_dir, f"{split}.csv"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return {
        "root": root,
        "csv_dir": csv_dir,
        "audio_dir": base,
        "good": good,
        "missing": "spgi_13aa6c0669adb5544a0d62beef677189_999",
        "empty": "spgi_13aa6c0669adb5544a0d62beef677189_1000",
    }


# --------------------------------------------------------------------------------------
# CORAAL: flat <basefile>.txt (Line, Spkr, StTime, Content, EnTime) + <basefile>.wav, 44.1 kHz

CORAAL_RATE = 44100

# The main interview: (Spkr, StTime, EnTime, Content, sample placed at StTime or None).
MAIN_BASE = "DCB_se1_ag1_f_01_1"
MAIN_SPK = "DCB_se1_ag1_f_01"
MAIN_ROWS = [
    ("DCB_int_01", 0.2, 2.21, "What joy /RD-NAME-2/ there is in living <laugh>.", "spk2_snt1"),
    (MAIN_SPK, 2.5, 5.37, "The child almost hurt the small dog <laugh>", "spk1_snt1"),
    (MAIN_SPK, 5.37, 5.6, "(pause 0.23)", None),
    (MAIN_SPK, 5.6, 8.75, "Drop the [tue] when you aks /RD-NAME-3. the figures", "spk1_snt2"),
    ("DCB_int_01", 9.0, 10.76, "We are /unintelligible/ sure that one wore is enough", "spk2_snt2"),
    (MAIN_SPK, 11.0, 13.72, "At that high level [/RD-NAME-2/-] the air is pure <ts>", "spk1_snt3"),
    (MAIN_SPK, 13.9, 14.3, "/inaudible/", None),
    (MAIN_SPK, 14.5, 17.03, "A thin stripe {pause 0.5} runs down the busses middle <laugh]", "spk1_snt4"),
    (MAIN_SPK, 17.5, 17.2, "Impossible time here", None),
    (MAIN_SPK, 17.6, 20.2, "[laughing] Sunday is the best part of the week", "spk1_snt5"),
    (MAIN_SPK, 20.5, 40.0, "This row runs past the end", None),
]
MAIN_SECONDS = 21.0

# Other interviews: basefile -> (seconds, rows). One row each, interviewee speaking.
OTHER = {
    "DCB_se1_ag1_f_01_2": (4.0, [("DCB_se1_ag1_f_01", 0.5, 3.65, "Drop the tue.", "spk1_snt2")]),
    "DCB_se1_ag2_m_02_1": (
        4.0,
        [
            ("DCB_int_01", 0.1, 1.86, "Ken pairs lack full flavor", "spk2_snt5"),
            ("DCB_se1_ag2_m_02", 2.0, 3.88, "Tear thin sheep", "spk2_snt3"),
        ],
    ),
    "ATL_se0_ag1_f_01_1": (4.0, [("ATL_se0_ag1_f_01", 0.5, 3.22, "At that high level", "spk1_snt3")]),
    "ATL_se0_ag2_m_02_1": (3.0, [("ATL_se0_ag2_m_02", 0.5, 2.54, "Mend the coat", "spk2_snt4")]),
    "PRV_se0_ag1_f_01_1": (3.0, [("PRV_se0_ag1_f_01", 0.5, 2.51, "What joy", "spk2_snt1")]),
}
TRUNCATED = "PRV_se0_ag1_f_01_1"
NO_AUDIO = "ROC_se0_ag1_m_01_1"

# A third part of the main interview, as real exports can be: rows NOT in StTime order
# (row 3, an interviewer turn at 3.5 s, comes after row 2 at 5.5 s), a long interviewer row
# (4) reaching into the gap between two interviewee rows (5 and 6), and real CORAAL markup:
# line-level notes, overlap brackets inside words, a redaction with a clitic, an unclosed
# pause, an empty Content cell.
ORDER_BASE = "DCB_se1_ag1_f_01_3"
ORDER_SECONDS = 20.0
ORDER_ROWS = [
    (MAIN_SPK, 0.5, 3.37, "(laughing) The child almost hurt the small dog", "spk1_snt1"),
    (MAIN_SPK, 5.5, 8.65, "Drop the [tue] when you [ad]d the figures {laughs}", "spk1_snt2"),
    ("DCB_int_01", 3.5, 5.3, "What joy there is in living", "spk2_snt2"),
    ("DCB_int_01", 9.0, 13.4, "Ken pairs lack full [flavor]", "spk2_snt5"),
    (MAIN_SPK, 9.3, 12.2, "[At that high level] the air is pure", "spk1_snt3"),
    (MAIN_SPK, 13.5, 16.03, "A thin stripe runs down /RD-NAME-2/'s middle", "spk1_snt4"),
    (MAIN_SPK, 16.5, 16.9, "", None),
    (MAIN_SPK, 17.0, 19.6, "Sunday is the best part of the w[eek] (pause 0.5", "spk1_snt5"),
]
# Files named like basefiles that are not transcripts: a 0-byte .txt next to its audio, and
# another export (an ELAN-style tier table) without audio.
HEADERLESS = {
    "DCA_se1_ag1_f_01_1": "",
    "DCA_se1_ag2_m_01_1": "Tier\tBegin Time\tEnd Time\tAnnotation\nDCA_se1_ag2_m_01\t0.5\t2.0\tWhat joy\n",
}
# Audio whose transcript is missing (its textfiles tarball not unpacked).
NO_TRANSCRIPT_BASE = "VLD_se0_ag2_f_01_1"


def coraal_transcript(rows):
    lines = ["Line\tSpkr\tStTime\tContent\tEnTime"]
    for i, (spkr, st, en, content, _) in enumerate(rows, start=1):
        lines.append(f"{i}\t{spkr}\t{st}\t{content}\t{en}")
    return "\n".join(lines) + "\n"


def make_coraal(root):
    """Write a mini CORAAL: text files in one folder (as from ``DCB_textfiles_*.tar.gz``),
    audio in per-component part folders; plus a metadata .txt, a truncated wav and a
    transcript without audio, an interview part with rows out of StTime order, .txt files
    named like basefiles but without the header (one with audio). Returns the folder layout
    facts."""
    interviews = {MAIN_BASE: (MAIN_SECONDS, MAIN_ROWS), **OTHER, ORDER_BASE: (ORDER_SECONDS, ORDER_ROWS)}
    for base, (seconds, rows) in interviews.items():
        component = base[:3]
        text_dir = os.path.join(root, "textfiles")
        os.makedirs(text_dir, exist_ok=True)
        with open(os.path.join(text_dir, base + ".txt"), "w", encoding="utf-8") as f:
            f.write(coraal_transcript(rows))
        audio = place(seconds, CORAAL_RATE, [(s, st) for _, st, _, _, s in rows if s])
        wav = write_wav(os.path.join(root, f"{component}_audio_part01", base + ".wav"), audio, CORAAL_RATE)
        if base == TRUNCATED:
            truncate(wav)
    with open(os.path.join(root, "textfiles", NO_AUDIO + ".txt"), "w", encoding="utf-8") as f:
        f.write(coraal_transcript([("ROC_se0_ag1_m_01", 0.5, 2.0, "No audio for this", None)]))
    for base, text in HEADERLESS.items():
        with open(os.path.join(root, "textfiles", base + ".txt"), "w", encoding="utf-8") as f:
            f.write(text)
    write_wav(
        os.path.join(root, "DCA_audio_part01", "DCA_se1_ag1_f_01_1.wav"),
        place(3.0, CORAAL_RATE, [("spk2_snt4", 0.5)]),
        CORAAL_RATE,
    )
    write_wav(
        os.path.join(root, "VLD_audio_part01", NO_TRANSCRIPT_BASE + ".wav"),
        place(3.0, CORAAL_RATE, [("spk1_snt5", 0.2)]),
        CORAAL_RATE,
    )
    with open(os.path.join(root, "DCB_metadata_2018.10.06.txt"), "w", encoding="utf-8") as f:
        f.write("CORAAL.File\tCORAAL.Spkr\tGender\tAge\nDCB_se1_ag1_f_01_1\tDCB_se1_ag1_f_01\tFemale\t19\n")
    return {"root": root}


# --------------------------------------------------------------------------------------
# DiPCo: audio/{dev,eval}/<S>_<P>.wav (close-talk, 16 kHz) + transcriptions/{dev,eval}/<S>.json

DIPCO_SESSIONS = {
    # session: (split, seconds, participants, utterances)
    # utterance: (speaker, start, end, words, sample placed on the speaker's mic or None)
    "S02": (
        "dev",
        12.0,
        ["P05", "P06"],
        [
            ("P05", 0.5, 3.37, "Mm- the child almost hurt the small dog [laugh].", "spk1_snt1"),
            ("P06", 3.5, 5.51, "We are sure that one wore is enough.", "spk2_snt1"),
            ("P06", 5.6, 7.36, "What joy [inaudible 0:05:31.02] there is in living.", "spk2_snt2"),
            ("P05", 7.5, 9.0, "My name is [redacted].", None),
            ("P05", 9.2, 11.92, "At that high level the air is pure.", "spk1_snt3"),
        ],
    ),
    "S04": (
        "dev",
        8.0,
        ["P09", "P10"],
        [
            ("P09", 0.5, 3.03, "A thin stripe runs down the middle.", "spk1_snt4"),
            ("P10", 3.5, 5.54, "Mend the coat before you go out.", "spk2_snt4"),
            ("P10", 5.8, 5.2, "Impossible time.", None),
        ],
    ),
    "S05": (
        "dev",
        6.0,
        ["P11", "P12"],
        [
            ("P11", 0.5, 3.1, "Sunday is the best part of the week.", "spk1_snt5"),
            ("P12", 3.5, 4.2, "[noise] [inaudible]", None),
            ("P12", 4.3, 9.0, "Past the end of the audio.", None),
        ],
    ),
    "S01": (
        "eval",
        9.0,
        ["P01", "P02"],
        [
            ("P01", 0.3, 3.45, "Drop the tue when you add the figures.", "spk1_snt2"),
            ("P02", 3.6, 5.58, "Ken pairs lack full flavor.", "spk2_snt5"),
            ("P02", 5.7, 7.58, "Tear thin sheep from the other pat.", "spk2_snt3"),
            ("P01", 7.0, 8.9, "That is fine.", None),
        ],
    ),
    "S03": (
        "eval",
        4.0,
        ["P03", "P04"],
        [
            ("P03", 0.5, 3.37, "The child almost hurt the small dog.", "spk1_snt1"),
            ("P04", 0.6, 2.61, "We are sure that one wore is enough.", "spk2_snt1"),
        ],
    ),
}
DIPCO_TRUNCATED = ("S03", "P04")


def hms(seconds):
    """DiPCo's "HH:MM:SS.ff"."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}:{int(m):02d}:{s:05.2f}"


def make_dipco(root, top="Dipco"):
    """Write a mini DiPCo under ``root/top`` (the tarball's folder); far-field files too."""
    base = os.path.join(root, top) if top else root
    for session, (split, seconds, participants, utts) in DIPCO_SESSIONS.items():
        entries = []
        for spk, st, en, words, _ in utts:
            times = {"close-talk": None, **{f"U0{i}": None for i in range(1, 6)}}
            entries.append(
                {
                    "end_time": {k: hms(en) for k in times},
                    "gender": "male" if spk in ("P05", "P09") else "female",
                    "mother_tongue": "English",
                    "nativeness": "native",
                    "ref": "close-talk",
                    "session_id": session,
                    "speaker_id": spk,
                    "start_time": {k: hms(st) for k in times},
                    "words": words,
                }
            )
        folder = os.path.join(base, "transcriptions", split)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, session + ".json"), "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=4)
        for p in participants:
            audio = place(seconds, 16000, [(s, st) for spk, st, _, _, s in utts if s and spk == p])
            path = write_wav(os.path.join(base, "audio", split, f"{session}_{p}.wav"), audio, 16000)
            if (session, p) == DIPCO_TRUNCATED:
                truncate(path)
        # one far-field channel, which the prep must ignore
        write_wav(os.path.join(base, "audio", split, f"{session}_U01.CH1.wav"), np.zeros(1600, dtype="float32"), 16000)
    return {"root": root, "base": base}
