#!/usr/bin/env python3
"""The users' own commands on FULL-SIZE architectures (random weights, built offline), on CPU.

    python bench/full_size.py                 # whisper-small.en + parakeet-ctc-1.1b (~45 min, 2 cores)
    python bench/full_size.py --quick         # the same commands on tiny models (~5 min)
    python bench/full_size.py --runs SPGISpeech-whisper_llrd merge pipeline --work /tmp/fs --keep

Models, built offline from configs (nothing is downloaded):

* whisper-small.en: ``aode.builders.build_whisper(d_model=768, layers=12, heads=12, ffn=3072)``,
  the real architecture with the real 51864-token English vocabulary.
* parakeet-ctc-1.1b: a ``ParakeetForCTC`` with the config that transformers'
  ``configuration_parakeet.py`` documents for nvidia/parakeet-ctc-1.1b (its defaults) with
  42 layers, and layerdrop 0.1 as the converted hub config carries (the recipes set it to the
  ``layerdrop`` hparam, 0 by default). The hub model has a 1024-piece SentencePiece vocabulary +
  blank; here a character tokenizer padded with unused pieces to the same 1025 ids, blank (= pad)
  last at id 1024 as in the hub model, so the CTC head has the real shape.

Data: the tests' miniature corpora (tests/prep_fixtures_a.py and the builders of
tests/test_prep_{noisy_vctk,google_ne,jl_corpus}.py). Every run is a subprocess of the command
a user types, with the shipped hparams files and only size/time overrides. Per run: wall time,
seconds per training batch (tqdm's clock), peak RSS (wait4), exit status, and whether the log
shows the LLRD table and the training plan. Appends a markdown table to bench/RESULTS.md.
A failing run is recorded with its error tail and the script goes on.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")

# Size/time only: one epoch of two (optimizer) steps of one utterance, no loader workers.
SMALL = ["--number_of_epochs", "1", "--steps_per_epoch", "2", "--batch_size", "1", "--num_workers", "0"]
# Whisper with random weights never emits end-of-text, so every greedy decode would run to the
# 448-token cap (~0.3 s a token at whisper-small on one busy core): cap the validation/test
# decodes at 0.02 x 1500 encoder frames = 30 tokens, about what a trained model writes for these
# 2-3 s utterances (a time override like the others).
WHISPER_DECODE = ["--max_decode_ratio", "0.02"]
MODEL_OVERRIDES = {"whisper": WHISPER_DECODE, "parakeet": []}  # extra overrides per built model
# Split sizes that fit a miniature (as tests/test_recipes_cli.py).
PREP_OPTIONS = {
    "SPGISpeech": "{test_size: 3, valid_size: 2}",
    "CORAAL": "{n_valid_speakers: 1, n_test_speakers: 1}",
}
# The recipe runs, (corpus, hparams file), each named <corpus>-<hparams>. The 1.1B Parakeet runs
# go one at a time like every run.
RECIPE_RUNS = {
    f"{corpus}-{hparams.removesuffix('.yaml')}": (corpus, hparams)
    for corpus, hparams in (
        ("SPGISpeech", "whisper_llrd.yaml"),
        ("DiPCo", "whisper_llrd.yaml"),
        ("NoisyVCTK", "whisper_lora.yaml"),
        ("GoogleNE", "parakeet_lora.yaml"),
        ("CORAAL", "parakeet_llrd.yaml"),
        ("JLCorpus", "parakeet_llrd.yaml"),
    )
}
MERGE_MEMBERS = ("SPGISpeech-whisper_llrd", "DiPCo-whisper_llrd")
DDP_CORPUS = "SPGISpeech"
ALL_RUNS = list(RECIPE_RUNS) + ["merge", "pipeline", "ddp"]

# Full-size and quick model shapes.
WHISPER_SHAPES = {
    "full": dict(d_model=768, layers=12, heads=12, ffn=3072),
    "quick": dict(d_model=64, layers=2, heads=2, ffn=128),
}
# configuration_parakeet.py's defaults are nvidia/parakeet-ctc-1.1b's encoder, but 24 layers
PARAKEET_FULL = dict(
    hidden_size=1024,
    num_hidden_layers=42,
    num_attention_heads=8,
    intermediate_size=4096,
    subsampling_factor=8,
    subsampling_conv_channels=256,
    conv_kernel_size=9,
    num_mel_bins=80,
)
PARAKEET_SHAPES = {
    "full": PARAKEET_FULL,
    "quick": dict(  # narrower and shallower, the rest as the full one
        PARAKEET_FULL,
        hidden_size=144,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=576,
        subsampling_conv_channels=64,
    ),
}
PARAKEET_VOCAB = 1025  # 1024 SentencePiece pieces + blank (id 1024, the pad token)

# tqdm reads defaults from TQDM_* variables: make every progress bar print its exact elapsed
# seconds at every update, so the training steps can be timed from the recipe's own loop.
TQDM_ENV = {"TQDM_BAR_FORMAT": "@@tqdm|{n}|{total_fmt}|{elapsed_s:.3f}|{postfix}@@", "TQDM_MININTERVAL": "0"}
TQDM_RE = re.compile(r"@@tqdm\|(\d+)\|([^|]*)\|([\d.]+)\|(.*?)@@")


# ----------------------------------------------------------------------------- models
def build_whisper_model(folder, size):
    from transformers import WhisperForConditionalGeneration

    from aode.builders import build_whisper

    build_whisper(folder, **WHISPER_SHAPES[size])
    model = WhisperForConditionalGeneration.from_pretrained(folder)
    info = {
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": model.config.vocab_size,
        "shape": WHISPER_SHAPES[size],
    }
    del model
    return info


def build_parakeet_model(folder, size):
    """A freshly initialised ParakeetForCTC of ``size`` with a 1025-id character tokenizer."""
    import torch
    from transformers import ParakeetCTCConfig
    from transformers import ParakeetEncoderConfig
    from transformers import ParakeetFeatureExtractor
    from transformers import ParakeetForCTC
    from transformers import ParakeetProcessor

    from aode.builders import CHARACTERS
    from aode.builders import char_tokenizer

    # [<unk>, ▁] + characters + unused fillers + [<blank>] = 1025 ids, blank last (id 1024)
    fillers = [f"<unused_{i}>" for i in range(PARAKEET_VOCAB - 3 - len(CHARACTERS))]
    tokenizer = char_tokenizer(CHARACTERS + fillers)
    assert len(tokenizer) == PARAKEET_VOCAB and tokenizer.pad_token_id == PARAKEET_VOCAB - 1, len(tokenizer)
    shape = PARAKEET_SHAPES[size]
    encoder = ParakeetEncoderConfig(**shape, layerdrop=0.1)  # the rest: configuration_parakeet defaults
    config = ParakeetCTCConfig(
        vocab_size=PARAKEET_VOCAB,
        pad_token_id=tokenizer.pad_token_id,
        encoder_config=encoder.to_dict(),
        ctc_loss_reduction="mean",
        ctc_zero_infinity=True,
    )
    torch.manual_seed(0)
    model = ParakeetForCTC(config)
    model.config.architectures = ["ParakeetForCTC"]
    info = {
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": config.vocab_size,
        "shape": shape,
        "layerdrop_in_config": config.encoder_config.layerdrop,
    }
    model.save_pretrained(folder)
    del model
    ParakeetProcessor(ParakeetFeatureExtractor(feature_size=shape["num_mel_bins"]), tokenizer).save_pretrained(folder)
    return info


def build_model_main(kind, folder, size):
    """``--build-model``: runs in its own process so that the bench keeps no model in memory."""
    start = time.perf_counter()
    info = (build_whisper_model if kind == "whisper" else build_parakeet_model)(folder, size)
    info["seconds"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(folder, "bench_build.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)
    print(json.dumps(info))


# ----------------------------------------------------------------------------- corpora
def build_corpus(corpus, root):
    """The tests' miniature of ``corpus`` under ``root``; returns its --data_folder."""
    sys.path.insert(0, TESTS)
    if corpus == "SPGISpeech":
        from prep_fixtures_a import make_spgispeech

        return make_spgispeech(root)["root"]
    if corpus == "CORAAL":
        from prep_fixtures_a import make_coraal

        make_coraal(root)
        return root
    if corpus == "DiPCo":
        from prep_fixtures_a import make_dipco

        return make_dipco(root)["root"]
    if corpus == "NoisyVCTK":
        from test_prep_noisy_vctk import build_vctk

        build_vctk(root)
    elif corpus == "GoogleNE":
        from test_prep_google_ne import build_google_ne

        build_google_ne(root)
    elif corpus == "JLCorpus":
        from test_prep_jl_corpus import build_jl

        build_jl(root)
    else:
        raise ValueError(corpus)
    return root


# ----------------------------------------------------------------------------- running
def mem_available_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


THREADS = {}  # OMP/MKL threads of every command (--threads)


def new_row(run, model, cmd, shown=None):
    """The result row of a run of ``cmd`` (shown as ``shown``, else as its python command
    line), with the memory available as it starts."""
    return {
        "run": run,
        "model": model,
        "cmd": shown or "python " + " ".join(quote(c) for c in cmd[1:]),
        "mem_start": mem_available_gib(),
    }


def run_command(cmd, log_path, timeout, env=None):
    """Run ``cmd`` (its own process group) with stdout+stderr to ``log_path``.

    Returns (exit status, wall seconds, peak RSS in GiB): the peak is wait4's ``ru_maxrss``,
    the largest resident set of the process and of its waited-for descendants (so for torchrun:
    the largest single worker, not their sum).
    """
    full_env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        **TQDM_ENV,
        **THREADS,
        **(env or {}),
    )
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(quote(c) for c in cmd) + "\n")
        log.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        killed = []

        def kill():
            killed.append(True)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        # leftovers of the group (torchrun workers after a kill)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    rc = f"timeout ({timeout} s)" if killed else proc.returncode
    return rc, wall, usage.ru_maxrss / 2**20


def quote(arg):
    arg = str(arg)
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def train_timing(text):
    """Seconds per training batch from the recipe's own training progress bar.

    The bar is the one whose postfix shows ``train_loss``; batch k ends at the first update
    showing n = k. Returns (list of per-batch seconds, seconds at the last batch) or (None, None).
    """
    bars, current, last = [], None, None
    for match in TQDM_RE.finditer(text):
        n, total, elapsed, postfix = int(match[1]), match[2], float(match[3]), match[4]
        if current is None or n < last[0] or elapsed + 1e-6 < last[1] or total != current["total"]:
            current = {"total": total, "ends": {}, "train": False}
            bars.append(current)
        current["ends"].setdefault(n, elapsed)
        current["train"] |= "train_loss" in postfix
        last = (n, elapsed)
    train = [b for b in bars if b["train"]]
    if not train:
        return None, None
    ends = train[0]["ends"]
    times, prev = [], ends.get(0, 0.0)
    for k in range(1, max(ends) + 1):
        if k not in ends:
            break
        times.append(ends[k] - prev)
        prev = ends[k]
    return times, prev


def error_tail(text, lines=15):
    """The traceback's tail (or the log's) without progress-bar noise."""
    clean = [line for line in re.split(r"[\r\n]+", TQDM_RE.sub("", text)) if line.strip()]
    for i in range(len(clean) - 1, -1, -1):
        if clean[i].startswith("Traceback"):
            return "\n".join(clean[i:][-lines:])
    return "\n".join(clean[-lines:])


def check_recipe_log(text, row):
    row["llrd_table"] = "LLRD parameter groups" in text
    plan = re.search(r"training plan: (.*)", text)
    row["plan"] = plan[1].strip() if plan else None
    trainable = re.search(r"total trainable\s+([\d,]+)", text)
    row["trainable"] = int(trainable[1].replace(",", "")) if trainable else None
    layerdrop = re.search(r"layerdrop ([\d.]+)", row["plan"] or "")
    row["layerdrop"] = layerdrop[1] if layerdrop else None
    opt = re.search(r"= (\d+) optimizer steps", row["plan"] or "")
    row["opt_steps"] = int(opt[1]) if opt else None


def first_rows(src, dst, n):
    """The header and first ``n`` rows of the manifest ``src``, written to ``dst``."""
    import csv

    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(src, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        rows = [next(reader)] + [row for _, row in zip(range(n), reader)]
    with open(dst, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return dst


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args):
        self.args = args
        self.size = "quick" if args.quick else "full"
        self.work = args.work or tempfile.mkdtemp(prefix="aode_full_size_")
        os.makedirs(self.work, exist_ok=True)
        self.logs = os.path.join(self.work, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.models, self.corpora, self.rows = {}, {}, []
        self.started = time.perf_counter()

    def log(self, msg):
        print(f"[{time.perf_counter() - self.started:7.0f} s] {msg}", flush=True)

    def model(self, kind):
        if kind not in self.models:
            folder = os.path.join(self.work, "models", kind)
            info_file = os.path.join(folder, "bench_build.json")
            if not os.path.isfile(info_file):
                os.makedirs(folder, exist_ok=True)
                self.log(f"building {kind} ({self.size}) in {folder}")
                cmd = [sys.executable, os.path.abspath(__file__), "--build-model", kind, folder, self.size]
                rc, wall, rss = run_command(cmd, os.path.join(self.logs, f"build_{kind}.log"), self.args.timeout)
                if rc != 0:
                    raise RuntimeError(
                        f"building {kind} failed ({rc}):\n"
                        + error_tail(read(os.path.join(self.logs, f"build_{kind}.log")))
                    )
            with open(info_file, encoding="utf-8") as f:
                info = json.load(f)
            info["folder"] = folder
            self.models[kind] = info
            self.log(f"{kind}: {info['params'] / 1e6:.1f}M parameters, vocab {info['vocab']}")
        return self.models[kind]

    def corpus(self, name):
        if name not in self.corpora:
            root = os.path.join(self.work, "data", name)
            if not os.path.isdir(root):
                self.log(f"writing the miniature {name}")
                self.corpora[name] = build_corpus(name, root)
            else:  # written by an earlier run of the bench (--work)
                self.corpora[name] = root
        return self.corpora[name]

    def output(self, run):
        return os.path.join(self.work, "runs", run)

    def recipe_command(self, corpus, hparams, output, family):
        cmd = [
            os.path.join("recipes", corpus, "train.py"),
            os.path.join("hparams", hparams),
            "--data_folder",
            self.corpus(corpus),
            "--model_source",
            self.model(family)["folder"],
            "--output_folder",
            output,
            *SMALL,
        ]
        if corpus in PREP_OPTIONS:
            cmd += ["--prep_options", PREP_OPTIONS[corpus]]
        return cmd + MODEL_OVERRIDES[family]

    def record(self, row, text, rc):
        row["exit"] = rc
        row["ok"] = rc == 0 and row.get("ok", True)
        if not row["ok"]:
            row["error"] = row.get("error") or error_tail(text)
        self.rows.append(row)
        self.log(
            f"{row['run']}: exit {rc}, {row['wall']:.0f} s, peak RSS {row['rss']:.2f} GiB"
            + ("" if row["ok"] else "  FAILED:\n" + row["error"])
        )

    def run_logged(self, row, cmd, name):
        """Run ``cmd`` logged to ``<logs>/<name>.log``, its wall time and peak RSS into ``row``;
        returns (exit status, the log's text)."""
        log = os.path.join(self.logs, name + ".log")
        rc, row["wall"], row["rss"] = run_command(cmd, log, self.args.timeout)
        return rc, read(log)

    # ---------------------------------------------------------------- runs
    def recipe(self, run):
        corpus, hparams = RECIPE_RUNS[run]
        kind = hparams.split("_")[0]  # the built model the hparams file is for: whisper | parakeet
        output = self.output(run)
        shutil.rmtree(output, ignore_errors=True)
        cmd = [sys.executable] + self.recipe_command(corpus, hparams, output, kind)
        row = new_row(run, kind, cmd)
        self.log(f"{run}: {row['cmd']}")
        rc, text = self.run_logged(row, cmd, run)
        self.finish_recipe(row, text, output)
        self.record(row, text, rc)

    def finish_recipe(self, row, text, output):
        check_recipe_log(text, row)
        row["batches"], row["train_s"] = train_timing(text)
        expert = os.path.join(output, "expert")
        row["expert"] = os.path.isfile(os.path.join(expert, "config.json"))
        if row["expert"]:
            with open(os.path.join(expert, "config.json"), encoding="utf-8") as f:
                config = json.load(f)
            enc = config.get("encoder_config") or {}
            if "layerdrop" in enc:
                row["exported_layerdrop"] = enc["layerdrop"]
        problems = []
        if not row["llrd_table"]:
            problems.append("no LLRD table in the log")
        if not row["plan"]:
            problems.append("no training plan in the log")
        if not row["expert"]:
            problems.append("no expert/ folder exported")
        if problems:
            row["ok"] = False
            row["error"] = "; ".join(problems) + "\n" + error_tail(text)
        if not self.args.keep_checkpoints:  # model + AdamW state: 12.7 GB per 1.1B run
            shutil.rmtree(os.path.join(output, "save"), ignore_errors=True)

    def merge(self):
        members = {RECIPE_RUNS[r][0]: os.path.join(self.output(r), "expert") for r in MERGE_MEMBERS}
        output = self.output("merge")
        shutil.rmtree(output, ignore_errors=True)
        # Small test sets: the first utterance of a member's domain (DiPCo) and of a domain no
        # member saw (the forgetting set; it replaces aode.yaml's LibriSpeech sets). merge.py
        # decodes with the default length cap (it has no max_decode_ratio): with random weights
        # every decode runs to Whisper's 448-token cap (~2 min per model and set at whisper-small
        # on one core), so the experts, already tested by their own runs, are not evaluated again.
        sets = os.path.join(output + "_testsets")
        tests = {
            "DiPCo": first_rows(
                os.path.join(self.output("DiPCo-whisper_llrd"), "manifests", "test.csv"),
                os.path.join(sets, "DiPCo.csv"),
                1,
            )
        }
        for run, name in (("JLCorpus-parakeet_llrd", "JL Corpus"), ("NoisyVCTK-whisper_lora", "VCTK")):
            path = os.path.join(self.output(run), "manifests", "test.csv")
            if os.path.isfile(path):
                tests[name] = first_rows(path, os.path.join(sets, name.replace(" ", "_") + ".csv"), 1)
                break
        forgetting = [name for name in tests if name != "DiPCo"]
        mapping = lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"  # noqa: E731
        cmd = [
            sys.executable,
            os.path.join("recipes", "average", "merge.py"),
            os.path.join("hparams", "aode.yaml"),
            "--original",
            self.model("whisper")["folder"],
            "--experts",
            mapping(members),
            "--test_sets",
            mapping(tests),
            "--expert_of_test_set",
            "{}",
            "--forgetting_sets",
            "[" + ", ".join(forgetting) + "]",
            "--evaluate_experts",
            "False",
            "--output_folder",
            output,
        ]
        row = new_row("merge (aode.yaml, 2 Whisper experts)", "whisper", cmd)
        self.log(f"merge: {row['cmd']}")
        rc, text = self.run_logged(row, cmd, "merge")
        merged = os.path.join(output, "merged", "config.json")
        wer = os.path.join(output, "wer.csv")
        problems = [
            what for what, path in (("no merged/ folder", merged), ("no wer.csv", wer)) if not os.path.isfile(path)
        ]
        if problems:
            row["ok"] = False
            row["error"] = "; ".join(problems) + "\n" + error_tail(text)
        row["note"] = (
            f"{len(members)} members ({', '.join(MERGE_MEMBERS)}), test sets {list(tests)} "
            f"(1 utterance each), forgetting {forgetting}"
        )
        results = os.path.join(output, "results.md")
        if os.path.isfile(results):
            # its "# title" heading as bold text, so RESULTS.md keeps its own headings
            row["report"] = re.sub(r"(?m)^#+ (.*)$", r"**\1**", read(results).strip())
        self.record(row, text, rc)

    def pipeline(self):
        merged = os.path.join(self.output("merge"), "merged")
        wav = os.path.join(TESTS, "data", "samples", "speech", "spk1_snt1.wav")
        code = (
            "import json, time, soundfile as sf\n"
            "from transformers import pipeline\n"
            f"audio, rate = sf.read({wav!r}, dtype='float32')\n"
            "t = time.perf_counter()\n"
            f"asr = pipeline('automatic-speech-recognition', model={merged!r}, device='cpu')\n"
            "load = time.perf_counter() - t; t = time.perf_counter()\n"
            "out = asr({'raw': audio, 'sampling_rate': rate})\n"
            "print('PIPELINE', json.dumps({'load_s': load, 'decode_s': time.perf_counter() - t, "
            "'audio_s': len(audio) / rate, 'text': out['text'][:80]}))\n"
        )
        cmd = [sys.executable, "-c", code]
        row = new_row(
            "transformers.pipeline on the merge",
            "whisper",
            cmd,
            shown="pipeline('automatic-speech-recognition', model=<merge>/merged)(spk1_snt1.wav)",
        )
        self.log("pipeline on the merged folder")
        if not os.path.isfile(os.path.join(merged, "config.json")):
            row.update(wall=0.0, rss=0.0, ok=False, error="no merged model (the merge run failed)")
            self.record(row, "", "not run")
            return
        rc, text = self.run_logged(row, cmd, "pipeline")
        found = re.search(r"PIPELINE (\{.*\})", text)
        if found:
            info = json.loads(found[1])
            row["note"] = (
                f"load {info['load_s']:.1f} s, decode {info['decode_s']:.1f} s for "
                f"{info['audio_s']:.1f} s of audio (random weights: {len(info['text'])} chars of text)"
            )
        elif rc == 0:
            row["ok"], row["error"] = False, "no transcript printed\n" + error_tail(text)
        self.record(row, text, rc)

    def ddp(self):
        corpus, hparams = DDP_CORPUS, "whisper_llrd.yaml"
        output = self.output("ddp")
        shutil.rmtree(output, ignore_errors=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
        cmd += self.recipe_command(corpus, hparams, output, "whisper")
        cmd += ["--distributed_backend", "gloo", "--device", "cpu"]
        row = new_row(f"torchrun x2 {corpus}-whisper_llrd (gloo)", "whisper", cmd)
        self.log(f"ddp: {row['cmd']}")
        rc, text = self.run_logged(row, cmd, "ddp")
        self.finish_recipe(row, text, output)
        row["note"] = "peak RSS: the largest single process (each rank holds a model + AdamW)"
        self.record(row, text, rc)

    def run_all(self):
        for run in self.args.runs:
            try:
                if run in RECIPE_RUNS:
                    self.recipe(run)
                else:
                    getattr(self, run)()
            except Exception as err:  # a broken bench step is recorded too
                import traceback

                self.rows.append(
                    {
                        "run": run,
                        "model": "",
                        "cmd": "",
                        "wall": 0.0,
                        "rss": 0.0,
                        "exit": "bench error",
                        "ok": False,
                        "error": "".join(traceback.format_exception(err))[-2000:],
                    }
                )
                self.log(f"{run}: bench error {err!r}")

    # ---------------------------------------------------------------- report
    def table(self):
        today = datetime.date.today()
        cpu = cpu_name()
        versions = versions_line()
        total = time.perf_counter() - self.started
        lines = [
            f"\n## Full-size architectures (CPU){' -- QUICK (tiny models)' if self.args.quick else ''}\n",
            f"Date: {today}. Machine: {cpu}, {os.cpu_count()} cores, {mem_total_gib():.0f} GiB RAM, no GPU, "
            f"shared with other jobs. {versions}. Whole bench: {total / 60:.1f} min wall.\n",
        ]
        models = []
        for kind, info in self.models.items():
            models.append(
                f"{'whisper-small.en' if kind == 'whisper' else 'parakeet-ctc-1.1b'}"
                f"{' (quick shape)' if self.args.quick else ''}: {info['params'] / 1e6:.1f}M parameters "
                f"({info['params']:,}), vocab {info['vocab']}, built offline with random weights in "
                f"{info['seconds']:.0f} s"
            )
        if models:
            lines.append("Models: " + "; ".join(models) + ".\n")
        lines.append(
            "Every run is the user's command as a subprocess (`python recipes/<Corpus>/train.py hparams/<file>.yaml "
            "--data_folder <miniature> --model_source <folder> --output_folder <out> "
            + " ".join(SMALL)
            + "` [+ `--prep_options` split sizes for SPGISpeech/CORAAL; + `"
            + " ".join(WHISPER_DECODE)
            + "` for Whisper: random weights never emit end-of-text, this caps validation/test decodes at 30 tokens]), "
            f"on the tests' miniature corpora; `OMP_NUM_THREADS={THREADS.get('OMP_NUM_THREADS')}` for every "
            "command (torchrun: per worker). "
            "Columns: **exit** the exit status; **wall s** the whole command (imports, corpus prep, model load, "
            "training, validation decode, checkpoint, export, test decode); **train s** the training loop of the "
            "one epoch; **s/batch** seconds per training batch (forward + backward, + the optimizer step every "
            "`grad_accumulation_factor` batches) read from the recipe's own training progress bar (tqdm's clock, "
            "bar format set through `TQDM_BAR_FORMAT`): the first batch (optimizer-state allocation included), "
            "then the mean of the others; **opt steps** optimizer steps from the training plan; **peak RSS** "
            "wait4's `ru_maxrss` of the command (for torchrun: the largest single process); **mem avail** the "
            "machine's MemAvailable when the run started; **LLRD / plan** whether the log shows the LLRD "
            "parameter-group table and the `training plan` line; **layerdrop** as the training plan reports it.\n"
        )
        lines += [
            "| run | model | exit | wall s | train s | s/batch (1st; rest) | opt steps | peak RSS GiB | "
            "mem avail GiB | LLRD / plan | layerdrop |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            batches = r.get("batches")
            if batches:
                rest = f"{sum(batches[1:]) / len(batches[1:]):.1f}" if len(batches) > 1 else "-"
                per = f"{batches[0]:.1f}; {rest} ({len(batches)} batches)"
            else:
                per = "-"
            train_s = f"{r['train_s']:.0f}" if r.get("train_s") else "-"
            checks = (
                "-"
                if "llrd_table" not in r
                else f"{'yes' if r['llrd_table'] else 'NO'} / {'yes' if r.get('plan') else 'NO'}"
            )
            status = f"{r['exit']}" + ("" if r.get("ok") else " FAILED")
            lines.append(
                f"| {r['run']} | {r.get('model', '')} | {status} | {r['wall']:.0f} | {train_s} | {per} | "
                f"{r.get('opt_steps') or '-'} | {r['rss']:.2f} | {r.get('mem_start', float('nan')):.1f} | "
                f"{checks} | {r.get('layerdrop') or '-'} |"
            )
        notes = []
        for r in self.rows:
            extra = []
            if r.get("plan"):
                extra.append(f"plan: `{r['plan']}`")
            if r.get("trainable"):
                extra.append(f"trainable parameters {r['trainable']:,}")
            if "exported_layerdrop" in r:
                extra.append(f"exported config layerdrop {r['exported_layerdrop']}")
            if r.get("note"):
                extra.append(r["note"])
            if extra:
                notes.append(f"- {r['run']}: " + "; ".join(extra))
        if notes:
            lines += ["", "Per run:", *notes]
        for r in self.rows:
            if r.get("report"):
                lines += [
                    "",
                    f"{r['run']}: its results.md (WER of random-weight models, meaningless as numbers):",
                    "",
                    r["report"],
                ]
        failed = [r for r in self.rows if not r.get("ok")]
        for r in failed:
            lines += [
                "",
                f"**{r['run']} failed** (exit {r['exit']}): `{r.get('cmd', '')}`",
                "",
                "```",
                r.get("error", "").strip()[-3000:],
                "```",
            ]
        lines.append("\nReproduce: `python bench/full_size.py` (`--quick` for tiny models, `--runs` to pick runs).\n")
        return "\n".join(lines)


def cpu_name():
    """The CPU's model name (/proc/cpuinfo), else what platform says."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def mem_total_gib():
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) / 2**20
    except OSError:
        return float("nan")


def versions_line():
    import importlib.metadata as md

    out = [f"Python {platform.python_version()}"]
    for name in ("torch", "transformers", "speechbrain"):
        try:
            out.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--build-model"]:
        return build_model_main(*argv[1:4])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models instead of the full-size ones")
    parser.add_argument("--runs", nargs="+", default=ALL_RUNS, choices=ALL_RUNS)
    parser.add_argument("--work", help="work folder (models, corpora, runs, logs); default a temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (always kept with --work)")
    parser.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each run's save/ (the 1.1B model's checkpoint is 12.7 GB with AdamW state)",
    )
    parser.add_argument("--timeout", type=int, default=None, help="seconds per command (1500 full, 600 quick)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP/MKL threads per process (default 1: the 2 cores are shared with other jobs)",
    )
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    parser.add_argument(
        "--append",
        dest="append",
        action="store_true",
        default=None,
        help="append the table to --results (default: yes, no with --quick)",
    )
    parser.add_argument("--no-append", dest="append", action="store_false")
    args = parser.parse_args(argv)
    args.timeout = args.timeout or (600 if args.quick else 1500)
    append = (not args.quick) if args.append is None else args.append
    THREADS.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    bench = Bench(args)
    bench.log(f"work folder {bench.work}; runs {args.runs}")
    bench.run_all()
    text = bench.table()
    print(text)
    if append:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(text)
        bench.log(f"appended to {args.results}")
    with open(os.path.join(bench.work, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    if not (args.work or args.keep):
        shutil.rmtree(bench.work, ignore_errors=True)
    return 0 if all(r.get("ok") for r in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
