"""The experiment driver's scenario table and row ids: any subset of scenarios runs, each model
is decoded once per set, tables are chosen by id, the greedy soup ranks by its dev table.

Most tests replace training, merging, decoding, Fisher estimation and weight search by
instant fakes that write what the driver checks for (so they take a second); the last one
runs the real thing on tiny models.
"""

import csv
import hashlib
import json
import os
import shutil
import sys

import pytest

from aode.config import EVAL_BATCH_SIZE
from aode.config import ORIGINAL_NAME
from aode.config import ConfigError
from aode.config import ExperimentConfig
from aode.config import TrainingConfig
from aode.config import load_yaml
from aode.config import validate
from aode.experiment import SCENARIO_BY_ID
from aode.experiment import SCENARIO_IDS
from aode.experiment import SCENARIOS
from aode.experiment import TABLES
from aode.experiment import Experiment
from aode.experiment import resolve_scenarios
from aode.reuse import training_stamp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "recipes", "average"))
# routed builds and decodes real deltas of real models, which the fakes below do not make:
# tests/test_experiment.py::test_reproduce_routed runs it on tiny real models instead
ALL = [s for s in SCENARIO_IDS if s != "routed"]
# what `scenarios: [iterative]` alone gives: the experts and both averages it starts from
ITERATIVE_TABLE7 = [
    "Pretrained",
    "Fine-tuned - a",
    "Fine-tuned - b",
    "AoDE",
    "AoDE with orig.",
    "AoDE - iteration 2",
    "AoDE - iteration 2 w/ orig.",
]


def _hparams(tmp_path, speaker_csvs, scenarios, **extra):
    def domain(csv_path):
        return {"train_csv": csv_path, "valid_csv": csv_path, "test_csv": csv_path}

    return {
        "title": "ids",
        "output_folder": str(tmp_path / "exp"),
        "original": str(tmp_path / "original"),
        "domains": {"a": domain(speaker_csvs["spk1"]), "b": domain(speaker_csvs["spk2"])},
        "forgetting_sets": {"clean": speaker_csvs["all"], "other": speaker_csvs["all"]},
        "forgetting_dev_sets": {"clean_dev": speaker_csvs["all"]},
        "scenarios": scenarios,
        "sequential_orders": [["a", "b"]],
        "iterations": 2,
        "merge_methods": {"TIES": {"method": "ties", "options": {"density": 0.5}}},
        "train_hparams_file": os.path.join(ROOT, "hparams", "parakeet_llrd.yaml"),
        "lora_hparams_file": os.path.join(ROOT, "hparams", "parakeet_lora.yaml"),
        "normalizer": "basic",
        "progressbar": False,
        **extra,
    }


def _model_folder(folder, info, provenance=None):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(info, f)
    if provenance is not None:  # what the real trainer and merger record: the stamp a rerun checks
        with open(os.path.join(folder, "aode.json"), "w") as f:
            json.dump(provenance, f)
    return folder


def _wer(model, test_set):
    return 10.0 + int(hashlib.sha1(f"{model}|{test_set}".encode()).hexdigest(), 16) % 50


@pytest.fixture
def fake(monkeypatch):
    """Instant stand-ins; ``calls`` records trainings, merges, evaluation requests and decodes
    (an evaluation not found in its cache folder)."""
    import aode.evaluate
    import aode.fisher
    import aode.merge
    import aode.search
    import aode.train

    calls = {"train": [], "merge": [], "request": [], "decode": []}

    def train_expert(hparams, run_opts=None, corpus=None):
        calls["train"].append(corpus)
        return _model_folder(
            os.path.join(hparams["output_folder"], aode.train.EXPERT_DIR),
            {"init_from": hparams["init_from"], "lora_rank": hparams["lora_rank"]},
            {"kind": "expert", "made_from": training_stamp(validate(TrainingConfig, hparams))},
        )

    def merge_models(members, output, **kwargs):
        calls["merge"].append(os.path.basename(output))
        return _model_folder(
            output,
            {"members": members, "weights": kwargs["weights"], "method": kwargs["method"]},
            {"kind": "merge", **kwargs["extra_provenance"]},
        )

    def evaluate_model(model, test_sets, out_folder, **kwargs):
        root = os.path.basename(os.path.dirname(out_folder))
        calls["request"].append((root, model))
        results = {}
        for name in test_sets:
            path = os.path.join(out_folder, f"{name}.json")
            if not os.path.isfile(path):
                calls["decode"].append((root, model, name))
                os.makedirs(out_folder, exist_ok=True)
                with open(path, "w") as f:
                    json.dump({"wer": _wer(model, name)}, f)
            with open(path) as f:
                results[name] = json.load(f)
        return results

    def search_weights(members, base, dev_sets, forgetting_sets, out_folder, **kwargs):
        return {"folder": _model_folder(os.path.join(out_folder, "candidates", "chosen"), {})}

    monkeypatch.setattr(aode.train, "train_expert", train_expert)
    monkeypatch.setattr(aode.merge, "merge_models", merge_models)
    monkeypatch.setattr(aode.evaluate, "evaluate_model", evaluate_model)
    monkeypatch.setattr(aode.fisher, "estimate_fisher", lambda *args, **kwargs: None)
    monkeypatch.setattr(aode.search, "search_weights", search_weights)
    return calls


def _table(out, name):
    return [r["model"] for r in csv.DictReader(open(out / name / "results.csv"))]


# ------------------------------------------------------------------------ the scenario table
def test_scenario_table_ids_labels_and_needs():
    assert len(SCENARIO_IDS) == len(SCENARIOS) == len({s.label for s in SCENARIOS})
    for position, scenario in enumerate(SCENARIOS):
        assert scenario.table in TABLES
        assert all(SCENARIO_IDS.index(n) < position for n in scenario.needs), scenario.id  # needs come first
    assert resolve_scenarios([]) == ("experts",)
    assert resolve_scenarios(["iterative"]) == ("experts", "aode", "aode_with_original", "iterative")
    assert resolve_scenarios(["greedy_soup", "sequential"]) == ("experts", "sequential", "greedy_soup")
    assert resolve_scenarios(SCENARIO_IDS) == SCENARIO_IDS


def test_misspelt_scenario_fails_before_any_work(tmp_path, speaker_csvs, fake):
    with pytest.raises(ConfigError, match="unknown scenario 'iterativ' \\(did you mean 'iterative'\\?\\)"):
        Experiment(_hparams(tmp_path, speaker_csvs, ["aode", "iterativ"]))
    assert not (tmp_path / "exp").exists() and not fake["train"]


def test_misspelt_scenario_on_the_command_line_fails_before_the_corpus(tmp_path):
    import reproduce

    with pytest.raises(ConfigError, match="did you mean 'weighted'"):
        reproduce.main(
            [
                os.path.join(ROOT, "hparams", "mini.yaml"),
                "--output_folder",
                str(tmp_path / "mini"),
                "--scenarios",
                "[experts, weigthed]",
            ]
        )
    assert not (tmp_path / "mini").exists()


@pytest.mark.parametrize("key, field", [("train_overrides", "steps_per_epoch"), ("lora_overrides", "lora_rank")])
def test_misspelt_training_override_fails_before_any_training(tmp_path, speaker_csvs, fake, key, field):
    hp = _hparams(tmp_path, speaker_csvs, ["lora"], **{key: {field[:-1]: 2}})
    with pytest.raises(ConfigError, match=f"{key}: .*unknown training key '{field[:-1]}' \\(did you mean '{field}'"):
        Experiment(hp)
    assert not fake["train"]


def test_experiment_yaml_defaults_and_shipped_files(tmp_path, speaker_csvs):
    minimal = {
        k: v
        for k, v in _hparams(tmp_path, speaker_csvs, ["aode"]).items()
        if k in ("output_folder", "original", "domains", "forgetting_sets", "train_hparams_file")
    }
    config = validate(ExperimentConfig, minimal)
    assert config.eval_batch_size == EVAL_BATCH_SIZE and config.original_name == ORIGINAL_NAME
    assert config.scenarios == ["experts", "aode", "aode_with_original"]
    assert Experiment(minimal).rows["original"].label == ORIGINAL_NAME
    for name in ("mini.yaml", "mini_full.yaml"):
        shipped = validate(ExperimentConfig, load_yaml(os.path.join(ROOT, "hparams", name)), name)
        assert shipped.eval_batch_size == 25 and shipped.synthetic_corpus.folder == shipped.corpus_folder
    # test_mini's --synthetic_corpus "{scale: 0.03}" replaces the mapping: the folder is corpus_folder
    reduced = load_yaml(os.path.join(ROOT, "hparams", "mini.yaml"), {"synthetic_corpus": {"scale": 0.03}})
    corpus = validate(ExperimentConfig, reduced).synthetic_corpus
    assert corpus.folder == reduced["corpus_folder"] and corpus.scale == 0.03
    with pytest.raises(ConfigError, match="weight_search needs forgetting_dev_sets"):
        validate(ExperimentConfig, {**minimal, "scenarios": ["weight_search"]})
    with pytest.raises(ConfigError, match="unknown domain in sequential_orders 'c'"):
        validate(ExperimentConfig, {**minimal, "sequential_orders": [["a", "c"]]})


# --------------------------------------------------------------------------- any subset runs
@pytest.mark.parametrize("scenario", ALL)
def test_each_scenario_alone_runs_with_what_it_needs(tmp_path, speaker_csvs, fake, scenario):
    experiment = Experiment(_hparams(tmp_path, speaker_csvs, [scenario]))
    experiment.run()
    made = {r.scenario for r in experiment.rows.values()} - {None}
    assert made == set(resolve_scenarios([scenario]))
    for row in experiment.rows.values():
        assert row.label in _table(tmp_path / "exp", SCENARIO_BY_ID[row.scenario].table if row.scenario else "table7")


def test_iterative_alone_pulls_in_the_experts_and_both_averages(tmp_path, speaker_csvs, fake):
    Experiment(_hparams(tmp_path, speaker_csvs, ["iterative"])).run()
    assert _table(tmp_path / "exp", "table7") == ITERATIVE_TABLE7
    assert sorted(fake["train"]) == ["a", "b", "iter2_a", "iter2_b", "iter2_orig_a", "iter2_orig_b"]


# ------------------------------------------------------------------- each model decoded once
def test_each_model_is_decoded_once_per_set_and_a_rerun_decodes_nothing(tmp_path, speaker_csvs, fake):
    search = {"objective": "constrained", "max_forgetting": 50}
    experiment = Experiment(_hparams(tmp_path, speaker_csvs, ALL, weight_search=search))
    experiment.run()
    out = tmp_path / "exp"
    assert _table(out, "methods")[3:] == [
        "TIES",
        "Fisher-weighted",
        "Weight search (constrained, forgetting <= 50 %)",
        experiment.rows["greedy_soup"].label,
    ]
    assert len(fake["request"]) == len(set(fake["request"]))  # no model asked for twice in one place
    assert len(fake["decode"]) == len(set(fake["decode"]))
    folders = {os.path.normpath(r.folder) for r in experiment.rows.values() if r.folder}
    assert len([d for d in fake["decode"] if d[0] == "eval"]) == len(folders) * len(experiment.test_sets())
    # resampled = combined data here (both domains have 5 rows): one folder, decoded once
    assert experiment.rows["resampled"].folder == experiment.rows["combined"].folder
    assert not (out / "eval" / "resampled").exists() and (out / "eval" / "combined").is_dir()
    t7 = {r["model"]: r for r in csv.DictReader(open(out / "table7" / "results.csv"))}
    assert t7["Resampled data"]["Average"] == t7["Combined data"]["Average"]
    first = {}  # each folder is cached under the first row naming it
    for row in experiment.rows.values():
        if row.folder:
            first.setdefault(os.path.normpath(row.folder), row.id)
    assert sorted(os.listdir(out / "eval")) == sorted(first.values())
    for kind in fake:
        fake[kind].clear()
    Experiment(_hparams(tmp_path, speaker_csvs, ALL, weight_search=search)).run()
    assert not fake["train"] and not fake["merge"] and not fake["decode"]


def test_rows_sharing_a_folder_share_one_evaluation(tmp_path, speaker_csvs, fake):
    # a one-domain order is that domain's expert: one folder, two rows, one decode per set
    experiment = Experiment(_hparams(tmp_path, speaker_csvs, ["sequential"], sequential_orders=[["a"]]))
    experiment.run()
    assert experiment.rows["seq_a"].folder == experiment.rows["expert_a"].folder
    models = [d[1] for d in fake["decode"]]
    assert models.count(experiment.rows["expert_a"].folder) == len(experiment.test_sets())
    t7 = {r["model"]: r for r in csv.DictReader(open(tmp_path / "exp" / "table7" / "results.csv"))}
    assert t7["Sequential FT - a"]["Average"] == t7["Fine-tuned - a"]["Average"]


def test_results_folder_from_before_row_ids_is_reused(tmp_path, speaker_csvs, fake):
    hp = _hparams(tmp_path, speaker_csvs, ["aode", "weighted", "greedy_soup"])
    experiment = Experiment(hp)
    experiment.run()
    out = tmp_path / "exp"
    for kind in fake:
        fake[kind].clear()
    # the layout before row ids: eval/<table label>/ (a "/" in a label made subfolders),
    # eval_dev/<domain>/ for the greedy soup's experts
    for row in experiment.rows.values():
        if row.folder and (out / "eval" / row.id).exists():
            shutil.move(str(out / "eval" / row.id), str(out / "eval" / row.label))
    shutil.move(str(out / "eval_dev" / "expert_a"), str(out / "eval_dev" / "a"))
    assert (out / "eval" / "AoDE w" / " orig. - a x4" / "clean.json").exists()
    Experiment(hp).run()
    assert not fake["decode"] and (out / "eval" / "x4_a" / "clean.json").exists()


# ------------------------------------------------------------------------- tables by row id
def test_table8_takes_the_weighted_rows_by_id_not_by_label(tmp_path, speaker_csvs, fake):
    methods = {"Emphasis x4": {"method": "average", "weights": [4, 1]}, "TIES": {"method": "ties"}}
    Experiment(_hparams(tmp_path, speaker_csvs, ["aode", "weighted", "methods"], merge_methods=methods)).run()
    out = tmp_path / "exp"
    assert _table(out, "table8") == ["Pretrained", "AoDE", "AoDE w/ orig. - a x4", "AoDE w/ orig. - b x4"]
    assert _table(out, "methods") == ["Pretrained", "AoDE", "Emphasis x4", "TIES"]
    assert "Emphasis x4" not in _table(out, "table7")
    assert json.load(open(out / "merges" / "AoDE_with_orig_b_x4" / "config.json"))["weights"] == [1.0, 4.0, 1.0]


def test_a_merge_method_named_like_a_row_is_refused(tmp_path, speaker_csvs, fake):
    experiment = Experiment(
        _hparams(tmp_path, speaker_csvs, ["aode", "methods"], merge_methods={"AoDE": {"method": "average"}})
    )
    with pytest.raises(ConfigError, match="'AoDE'"):
        experiment.run()


# ------------------------------------------------------------------------------ greedy soup
@pytest.mark.parametrize("best, worst", [("a", "b"), ("b", "a")])
def test_greedy_soup_ranks_the_experts_by_its_dev_table(tmp_path, speaker_csvs, fake, best, worst):
    experiment = Experiment(_hparams(tmp_path, speaker_csvs, ["greedy_soup"]))
    experts = {d: _model_folder(str(tmp_path / "experts" / d), {}) for d in ("a", "b")}
    dev = {best: {"a": 10.0, "b": 10.0, "clean_dev": 10.0}, worst: {"a": 90.0, "b": 90.0, "clean_dev": 90.0}}
    experiment.greedy_soup(experts, dev)
    log = json.load(open(tmp_path / "exp" / "greedy_soup.json"))
    assert log[0] == {"members": [best], "dev_average": 10.0, "kept": True}
    assert log[1]["members"] == [best, worst]
    # the experts' dev WERs came from the table: only the trial soup was decoded
    assert {d[1] for d in fake["decode"]} == {str(tmp_path / "exp" / "merges" / f"soup_{best}+{worst}")}
    soup = experiment.rows["greedy_soup"]
    assert soup.label == (f"Greedy soup ({best}+{worst})" if log[1]["kept"] else f"Greedy soup ({best})")


# --------------------------------------------------------------------------- the real thing
@pytest.mark.slow
def test_iterative_alone_on_tiny_models_decodes_each_model_once(tiny_parakeet, speaker_csvs, tmp_path, monkeypatch):
    import reproduce

    from aode.brain import ASRBrain

    decodes = []
    write_utterances = ASRBrain.write_utterances  # once per decoded test set

    def counting(self, path):
        decodes.append(path)
        return write_utterances(self, path)

    monkeypatch.setattr(ASRBrain, "write_utterances", counting)
    hp = tmp_path / "exp.yaml"
    hp.write_text(f"""
output_folder: {tmp_path / "exp"}
original: {tiny_parakeet}
domains:
    a: {{train_csv: {speaker_csvs["spk1"]}, valid_csv: {speaker_csvs["spk1"]}, test_csv: {speaker_csvs["spk1"]}}}
    b: {{train_csv: {speaker_csvs["spk2"]}, valid_csv: {speaker_csvs["spk2"]}, test_csv: {speaker_csvs["spk2"]}}}
forgetting_sets: {{clean: {speaker_csvs["all"]}}}
scenarios: [iterative]
iterations: 2
train_hparams_file: {ROOT}/hparams/parakeet_llrd.yaml
train_overrides: {{lr: 0.003, number_of_epochs: 1, steps_per_epoch: 1, batch_size: 2, num_workers: 0,
                  progressbar: False, normalizer: basic}}
normalizer: basic
progressbar: False
""")
    reproduce.main([str(hp)])
    out = tmp_path / "exp"
    assert _table(out, "table7") == ITERATIVE_TABLE7
    eval_decodes = [d for d in decodes if d and os.path.dirname(os.path.dirname(d)) == str(out / "eval")]
    assert len(eval_decodes) == len(set(eval_decodes)) == 7 * 3
    decodes.clear()
    reproduce.main([str(hp)])
    assert not decodes
