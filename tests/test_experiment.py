"""The averaging recipe and the scenario driver, end to end on tiny offline models."""

import csv
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes", "average"))


def _two_domains(tmp_path, original, csvs):
    """The head of an experiment YAML: speakers spk1 and spk2 as domains a and b, all as clean."""
    return f"""title: tiny
output_folder: {tmp_path / "exp"}
original: {original}
domains:
    a: {{train_csv: {csvs["spk1"]}, valid_csv: {csvs["spk1"]}, test_csv: {csvs["spk1"]}}}
    b: {{train_csv: {csvs["spk2"]}, valid_csv: {csvs["spk2"]}, test_csv: {csvs["spk2"]}}}
forgetting_sets:
    clean: {csvs["all"]}"""


def _yaml(path, text):
    path.write_text(text)
    return str(path)


def test_merge_recipe(tiny_parakeet, speaker_csvs, tmp_path, capsys):
    import merge as merge_recipe

    from aode.train import train_expert

    experts = {}
    for spk in ("spk1", "spk2"):
        experts[spk] = train_expert(
            dict(
                output_folder=str(tmp_path / spk),
                train_csv=speaker_csvs[spk],
                valid_csv=speaker_csvs[spk],
                model_source=tiny_parakeet,
                lr=3e-3,
                number_of_epochs=1,
                steps_per_epoch=2,
                batch_size=2,
                progressbar=False,
            )
        )
    hp = _yaml(
        tmp_path / "aode.yaml",
        f"""
output_folder: {tmp_path / "out"}
original: {tiny_parakeet}
original_name: original
experts:
    spk1: {experts["spk1"]}
    spk2: {experts["spk2"]}
include_original: True
merged_name: AoDE
test_sets:
    spk1: {speaker_csvs["spk1"]}
    spk2: {speaker_csvs["spk2"]}
    clean: {speaker_csvs["all"]}
    other: {speaker_csvs["all"]}
forgetting_sets: [clean, other]
expert_of_test_set: {{spk1: spk1, spk2: spk2}}
normalizer: basic
progressbar: False
""",
    )
    merge_recipe.main([hp])
    out = tmp_path / "out"
    assert (out / "merged" / "model.safetensors").exists()
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["model", "spk1", "spk2", "clean", "other"] and "Forgetting %" in header
    rows = list(csv.DictReader(open(out / "wer.csv")))
    assert [r["model"] for r in rows] == ["original", "spk1", "spk2", "AoDE"]
    provenance = json.load(open(out / "merged" / "aode.json"))
    assert provenance["method"] == "average"
    # a second run decodes nothing: every result comes from the cache
    stamps = {p: os.path.getmtime(p) for p in (out / "eval").rglob("*.json")}
    merge_recipe.main([hp])
    assert stamps == {p: os.path.getmtime(p) for p in (out / "eval").rglob("*.json")}


@pytest.mark.slow
def test_reproduce_every_scenario(tiny_parakeet, speaker_csvs, tmp_path):
    import reproduce

    hp = _yaml(
        tmp_path / "exp.yaml",
        f"""
{_two_domains(tmp_path, tiny_parakeet, speaker_csvs)}
    other: {speaker_csvs["all"]}
scenarios: [experts, sequential, aode, aode_with_original, combined, resampled, iterative, weighted, lora, oracle,
            methods, fisher, weight_search, greedy_soup]
forgetting_dev_sets: {{clean_dev: {speaker_csvs["all"]}}}
fisher_utterances: 4
weight_search: {{objective: constrained, max_forgetting: 50, n_random: 1}}
sequential_orders: [[a, b]]
iterations: 2
merge_methods:
    TIES: {{method: ties, options: {{density: 0.5}}}}
train_hparams_file: {ROOT}/hparams/parakeet_llrd.yaml
train_overrides: {{lr: 0.003, number_of_epochs: 1, steps_per_epoch: 1, batch_size: 2, num_workers: 0,
                  progressbar: False, normalizer: basic}}
lora_hparams_file: {ROOT}/hparams/parakeet_lora.yaml
lora_overrides: {{number_of_epochs: 1, steps_per_epoch: 1, batch_size: 2, num_workers: 0, progressbar: False,
                 lora_rank: 2, lora_alpha: 4}}
normalizer: basic
progressbar: False
""",
    )
    reproduce.main([hp])
    out = tmp_path / "exp"
    t7 = [r["model"] for r in csv.DictReader(open(out / "table7" / "results.csv"))]
    assert t7 == [
        "Pretrained",
        "Fine-tuned - a",
        "Fine-tuned - b",
        "Sequential FT - a;b",
        "AoDE",
        "AoDE with orig.",
        "Combined data",
        "Resampled data",
        "AoDE - iteration 2",
        "AoDE - iteration 2 w/ orig.",
        "LoRA - a",
        "LoRA - b",
        "LoRA AoDE",
        "Oracle domain (FT)",
        "Oracle domain (LoRA)",
    ]
    t8 = [r["model"] for r in csv.DictReader(open(out / "table8" / "results.csv"))]
    assert t8 == ["Pretrained", "AoDE", "AoDE with orig.", "AoDE w/ orig. - a x4", "AoDE w/ orig. - b x4"]
    weighted = json.load(open(out / "merges" / "AoDE_with_orig_a_x4" / "aode.json"))
    assert weighted["weights"] == [4.0, 1.0, 1.0]
    methods = list(csv.DictReader(open(out / "methods" / "results.csv")))
    assert [m["model"] for m in methods][3:6] == [
        "TIES",
        "Fisher-weighted",
        "Weight search (constrained, forgetting <= 50 %)",
    ]
    assert methods[6]["model"].startswith("Greedy soup") and "Gain kept" in methods[0]
    assert (out / "search" / "search.png").exists()
    table7 = {r["model"]: r for r in csv.DictReader(open(out / "table7" / "results.csv"))}
    # both domains have 5 training rows: balancing changes nothing, so nothing is trained again
    assert not (out / "experts" / "resampled").exists()
    assert table7["Resampled data"]["Average"] == table7["Combined data"]["Average"]
    oracle = table7["Oracle domain (FT)"]
    assert float(oracle["Forgetting %"]) == 0
    assert (out / "greedy_soup.json").exists() and (out / "table7" / "results.png").exists()
    # resumable: a rerun trains, merges and decodes nothing
    files = {p: os.path.getmtime(p) for p in out.rglob("*.safetensors")}
    files.update({p: os.path.getmtime(p) for p in (out / "eval").rglob("*.json")})
    reproduce.main([hp])
    assert files == {p: os.path.getmtime(p) for p in files}


def test_resampled_data_is_trained_when_domains_differ_in_size(tiny_parakeet, speaker_csvs, tmp_path):
    import reproduce

    hp = _yaml(
        tmp_path / "exp.yaml",
        f"""
output_folder: {tmp_path / "exp"}
original: {tiny_parakeet}
domains:
    a: {{train_csv: {speaker_csvs["spk1"]}, valid_csv: {speaker_csvs["spk1"]}, test_csv: {speaker_csvs["spk1"]}}}
    b: {{train_csv: {speaker_csvs["all"]}, valid_csv: {speaker_csvs["all"]}, test_csv: {speaker_csvs["all"]}}}
forgetting_sets: {{clean: {speaker_csvs["all"]}}}
scenarios: [experts, combined, resampled]
train_hparams_file: {ROOT}/hparams/parakeet_llrd.yaml
train_overrides: {{lr: 0.003, number_of_epochs: 1, steps_per_epoch: 1, batch_size: 2, num_workers: 0,
                  progressbar: False, normalizer: basic}}
normalizer: basic
progressbar: False
""",
    )
    reproduce.main([hp])
    out = tmp_path / "exp"
    assert (out / "experts" / "resampled" / "expert" / "config.json").exists()
    balanced = list(csv.DictReader(open(out / "manifests" / "resampled_train.csv")))
    assert sum(r["ID"].startswith("a__") for r in balanced) == sum(r["ID"].startswith("b__") for r in balanced) == 10


@pytest.mark.slow
def test_reproduce_routed(tiny_parakeet, speaker_csvs, tmp_path):
    """The routed scenario through reproduce.py: its rows, and an oracle that does not restate
    the code: routed by the true domain with a delta kept whole (rank above every matrix's,
    LoRA read natively), each domain's set decodes as its expert does and the forgetting sets
    as the original does (the Oracle domain rows, decoded from the experts' own folders)."""
    import reproduce

    hp = _yaml(
        tmp_path / "exp.yaml",
        f"""
{_two_domains(tmp_path, tiny_parakeet, speaker_csvs)}
scenarios: [experts, aode_with_original, lora, oracle, routed]
general_data: {speaker_csvs["all"]}
forgetting_dev_sets: {{dev: {speaker_csvs["spk1"]}}}
routing:
    forms: {{"SVD whole": {{form: svd, rank: 4096}}, LoRA: {{form: lora}}}}
    utterances_per_class: 4
    held_out: [b]
    throughput_utterances: 4
    operating_points: true
    forgetting_budget: 1000
train_hparams_file: {ROOT}/hparams/parakeet_llrd.yaml
train_overrides: {{lr: 0.003, number_of_epochs: 1, steps_per_epoch: 1, batch_size: 2, num_workers: 0,
                  progressbar: False, normalizer: basic}}
lora_hparams_file: {ROOT}/hparams/parakeet_lora.yaml
lora_overrides: {{lr: 0.01, number_of_epochs: 1, steps_per_epoch: 1, batch_size: 2, num_workers: 0,
                 progressbar: False, lora_rank: 2, lora_alpha: 4}}
normalizer: basic
progressbar: False
""",
    )
    reproduce.main([hp])
    out = tmp_path / "exp"
    table7 = {r["model"]: r for r in csv.DictReader(open(out / "table7" / "results.csv"))}
    for label in ("Routed (SVD whole)", "Routed (SVD whole, router without b)", "Routed (LoRA)"):
        assert label in table7
    for form, oracle in (("SVD whole", "Oracle domain (FT)"), ("LoRA", "Oracle domain (LoRA)")):
        routed = table7[f"Oracle routed ({form})"]
        for column in ("a", "b", "clean", "Average", "Forgetting %"):
            assert routed[column] == table7[oracle][column], (form, column)
    routing = json.load(open(out / "routed" / "routing.json"))
    assert [r["row"] for r in routing] == [
        "Routed (SVD whole)",
        "Routed (SVD whole, router without b)",
        "Routed (LoRA)",
        "Routed (SVD whole, rule chosen on validation)",
        "Routed (LoRA, rule chosen on validation)",
    ]
    assert all(r["memory / one model"] > 1 and r["throughput / one model"] > 0 for r in routing)
    report = json.load(open(out / "routed" / "router_without_b" / "test_report" / "report.json"))
    assert report["confusion"]["rows"][-1] == "b"  # the held-out domain: where its utterances went
    # operating points: the rule the routed rows use, scored from the per-route cost table, gives
    # the WERs that decoding with the router gave; the chosen rule's own row, decoded, gives the
    # WERs its sweep predicted
    for form in ("SVD_whole", "LoRA"):
        rules = list(csv.DictReader(open(out / "routed" / "operating" / form / "operating.csv")))
        assert len(rules) == 2 * 7 * 6
        default = next(
            r for r in rules if (r["threshold"], r["general_bias"], r["fallback"]) == ("0.5", "0.0", "fallback")
        )
        for s in ("a", "b", "clean"):
            decoded = json.load(open(out / "eval" / f"routed_{form}" / f"{s}.json"))["wer"]
            assert float(default[f"test WER {s}"]) == pytest.approx(decoded, abs=1e-9), (form, s)
        label = f"Routed ({form.replace('_', ' ')}, rule chosen on validation)"
        assert label in table7
        text = (out / "routed" / "operating" / form / "operating.md").read_text()
        assert "largest difference from the WERs the sweep predicted 0.0000" in text, text
    # resumable: a rerun trains, builds and decodes nothing
    files = {p: os.path.getmtime(p) for p in out.rglob("*.safetensors")}
    files.update({p: os.path.getmtime(p) for p in (out / "eval").rglob("*.json")})
    reproduce.main([hp])
    assert files == {p: os.path.getmtime(p) for p in files}
