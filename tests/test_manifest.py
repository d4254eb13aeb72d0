"""The manifest contract: our reader and SpeechBrain's own read the same rows."""

import unicodedata

from speechbrain.dataio.dataio import load_data_csv

from aode.manifest import read_manifest
from aode.manifest import write_manifest

ROW = {
    "ID": "call1_7",
    "duration": 1.0,
    "wav": "/data/a.wav",
    "start": 0.0,
    "stop": 1.0,
    "spk_id": "call1",
    "wrd": "five million dollars",
    "wrd_raw": "Revenue was $5 million, $.5 a share, US$ 3 and $$ signs.",
}


def test_dollar_text_loads_with_speechbrain_and_round_trips(tmp_path):
    path = str(tmp_path / "m.csv")
    write_manifest(path, [ROW])
    assert read_manifest(path)[0]["wrd_raw"] == ROW["wrd_raw"]
    loaded = load_data_csv(path)["call1_7"]  # raised KeyError on "$5" before
    assert unicodedata.normalize("NFKC", loaded["wrd_raw"]) == ROW["wrd_raw"]
    assert loaded["duration"] == 1.0 and loaded["wav"] == ROW["wav"]


def test_speechbrain_variables_still_work_in_wav(tmp_path):
    path = str(tmp_path / "m.csv")
    write_manifest(path, [{**ROW, "wav": "$data_folder/a.wav"}])
    assert load_data_csv(path, {"data_folder": "/x"})["call1_7"]["wav"] == "/x/a.wav"
