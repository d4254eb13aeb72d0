"""Benchmark the streaming merge driver (aode.merge.merge_models, paper III-C) against a raw
read of its inputs, mergekit's raw state-dict merge and loading every member in memory, on
whisper-small-sized members (~242M parameters, fp32).

For N = 2, 5, 10 members (synthetic weights with Whisper small.en's tensor names and shapes,
written as safetensors with a minimal config.json), measures, each in a fresh subprocess and
``--repeat`` times (medians reported; the machine is shared and noisy):

* raw read: ``cat member files > /dev/null`` (reading the inputs once);
* read + write floor: the raw read, then ``cat member0 > file`` (writing one model-sized
  output): what any merge that reads its inputs and writes a file must at least spend;
* AoDE streaming: ``merge_models(members, out, method="average")`` with its defaults
  (read-ahead thread, 16 MiB of read buffers): wall time of the call, peak RSS (VmHWM);
* AoDE one thread: the same with ``read_ahead=0, max_chunk_bytes=8 MiB`` (the driver's
  behaviour before the read-ahead);
* mergekit-pytorch: mergekit's ``mergekit-pytorch`` (``merge_method: linear``, every weight
  1, ``dtype: float32``), called in-process after its imports (``--mergekit-python``: an
  interpreter with mergekit installed; skipped when none is found); its output is compared
  with ours tensor by tensor (max |difference|);
* in-memory: ``safetensors.torch.load_file`` of every member, average, ``save_file`` (once).

Targets (issue 13): AoDE streaming no slower than mergekit-pytorch, at most 2 x the raw read,
peak memory as before (<= 1.5 x one member). Page cache warm by default (inputs read once by
``cat`` before timing: the hardest case for the ratio); ``--cold N ...`` also times cold
reads for those N (drops the page cache before each run: needs root). Writes the tables to
the "## Merge" section of bench/RESULTS.md; removes its temp files.

    python bench/merge.py [--sizes 2 5 10] [--repeat 5] [--mergekit-python PY] [--cold 5]
                          [--workdir /tmp] [--small] [--no-write]
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "RESULTS.md")


def whisper_small_shapes(d=768, layers=12, ffn=3072, vocab=51864, mels=80, src=1500, tgt=448):
    """Tensor names and shapes of WhisperForConditionalGeneration (small.en), as saved."""
    shapes = {
        "model.encoder.conv1.weight": (d, mels, 3),
        "model.encoder.conv1.bias": (d,),
        "model.encoder.conv2.weight": (d, d, 3),
        "model.encoder.conv2.bias": (d,),
        "model.encoder.embed_positions.weight": (src, d),
        "model.encoder.layer_norm.weight": (d,),
        "model.encoder.layer_norm.bias": (d,),
        "model.decoder.embed_tokens.weight": (vocab, d),
        "model.decoder.embed_positions.weight": (tgt, d),
        "model.decoder.layer_norm.weight": (d,),
        "model.decoder.layer_norm.bias": (d,),
    }

    def attn(prefix):
        shapes[f"{prefix}.k_proj.weight"] = (d, d)
        for p in ("q_proj", "v_proj", "out_proj"):
            shapes[f"{prefix}.{p}.weight"] = (d, d)
            shapes[f"{prefix}.{p}.bias"] = (d,)

    def block(prefix, cross):
        attn(f"{prefix}.self_attn")
        norms = ["self_attn_layer_norm", "final_layer_norm"]
        if cross:
            attn(f"{prefix}.encoder_attn")
            norms.append("encoder_attn_layer_norm")
        for n in norms:
            shapes[f"{prefix}.{n}.weight"] = (d,)
            shapes[f"{prefix}.{n}.bias"] = (d,)
        shapes[f"{prefix}.fc1.weight"] = (ffn, d)
        shapes[f"{prefix}.fc1.bias"] = (ffn,)
        shapes[f"{prefix}.fc2.weight"] = (d, ffn)
        shapes[f"{prefix}.fc2.bias"] = (d,)

    for i in range(layers):
        block(f"model.encoder.layers.{i}", cross=False)
        block(f"model.decoder.layers.{i}", cross=True)
    return shapes


def make_members(workdir, n, shapes, vocab):
    import torch
    from safetensors.torch import save_file

    folders = []
    for i in range(n):
        folder = os.path.join(workdir, f"member{i}")
        os.makedirs(folder, exist_ok=True)
        g = torch.Generator().manual_seed(i)
        state = {k: torch.rand(s, generator=g) - 0.5 for k, s in shapes.items()}
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        del state
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"model_type": "whisper", "vocab_size": vocab}, f)
        folders.append(folder)
    return folders


def child_script(setup, work):
    """The code of a measured child process: ``setup`` (imports, argument parsing; not timed),
    then ``work`` timed, then one JSON line: wall time, peak RSS (VmHWM), RSS after setup."""
    return (
        "import json, os, sys, time\n"
        + setup.strip()
        + r"""
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
before = status("VmRSS")
t0 = time.perf_counter()
"""
        + work.strip()
        + r"""
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "peak": status("VmHWM"), "rss_after_import": before}))
"""
    )


STREAM = child_script(
    """
import torch
from aode.merge import merge_models
members, out, kw = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
""",
    'merge_models(members, out, method="average", progress=False, **kw)',
)

INMEM = child_script(
    """
import torch
from safetensors.torch import load_file, save_file
members, out = json.loads(sys.argv[1]), sys.argv[2]
""",
    """
states = [load_file(os.path.join(m, "model.safetensors")) for m in members]
merged = {}
for k in states[0]:
    acc = torch.zeros_like(states[0][k])
    for s in states:
        acc += s[k]
    merged[k] = acc / len(states)
os.makedirs(out)
save_file(merged, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
""",
)

# mergekit's own command (mergekit/scripts/merge_raw_pytorch.py), called after its imports
MERGEKIT = child_script(
    """
from mergekit.scripts.merge_raw_pytorch import main
members, out = json.loads(sys.argv[1]), sys.argv[2]
""",
    'main([sys.argv[3], out, "--quiet"], standalone_mode=False)',
)


def run_child(code, members, out, *extra, python=sys.executable):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(
        [python, "-c", code, json.dumps(members), out, *extra], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if res.returncode != 0:
        raise RuntimeError(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def timed_shell(command):
    t0 = time.perf_counter()
    subprocess.run(command, shell=True, check=True)
    return time.perf_counter() - t0


def model_files(members):
    return " ".join(os.path.join(m, "model.safetensors") for m in members)


def raw_read(members):
    return timed_shell(f"cat {model_files(members)} > /dev/null")


def read_write_floor(members, out):
    seconds = timed_shell(f"cat {model_files(members)} > /dev/null && cat {model_files(members[:1])} > {out}")
    os.remove(out)
    return seconds


def drop_page_cache():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def mergekit_config(members, path):
    lines = ["merge_method: linear", "dtype: float32", "models:"]
    for m in members:
        lines += [f"  - model: {os.path.join(m, 'model.safetensors')}", "    parameters: {weight: 1.0}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def find_mergekit_python(given):
    """An interpreter that imports mergekit and its mergekit version: ``given`` (an error if it
    cannot), else this one, else ``(None, None)``."""
    python = given or sys.executable
    if subprocess.run([python, "-c", "import mergekit.scripts.merge_raw_pytorch"], capture_output=True).returncode:
        if given:
            raise SystemExit(f"--mergekit-python {given}: cannot import mergekit there")
        return None, None
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('mergekit'))"], capture_output=True, text=True
    ).stdout.strip()
    return python, version


def max_abs_difference(file_a, file_b):
    """max |a - b| over every tensor of two safetensors files, one tensor at a time."""
    from safetensors import safe_open

    worst = 0.0
    with safe_open(file_a, "pt") as a, safe_open(file_b, "pt") as b:
        if set(a.keys()) != set(b.keys()):
            raise RuntimeError(f"{file_a} and {file_b} hold different tensor names")
        for name in a.keys():
            worst = max(worst, float((a.get_tensor(name) - b.get_tensor(name)).abs().max()))
    return worst


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def machine():
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        model = m.group(1).strip() if m else model
    except OSError:
        pass
    cores = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {cores} cores, {mem:.0f} GiB RAM"


def write_section(text, path=RESULTS):
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else "# Benchmarks\n"
    # up to the next heading: the "###" sections after it belong to the other benchmarks
    pattern = re.compile(r"^## Merge\n.*?(?=^##+ |\Z)", re.S | re.M)
    block = "## Merge\n\n" + text.strip() + "\n\n"
    if pattern.search(old):
        new = pattern.sub(lambda _: block, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + block
    with open(path, "w", encoding="utf-8") as f:
        f.write(new.rstrip("\n") + "\n")


ONE_THREAD = {"read_ahead": 0, "max_chunk_bytes": 8 * 2**20}


def measure(group, workdir, repeat, mergekit_python, cold, in_memory):
    """Every column for one group of members; the repeats interleave the columns, so a slow
    spell of the shared machine hits all of them rather than one."""
    if cold:
        prepare = drop_page_cache
    else:
        raw_read(group)  # warm the page cache

        def prepare():
            os.sync()  # no pending writeback from the previous run to throttle this one's writes

    out, kept = os.path.join(workdir, "out"), os.path.join(workdir, "kept")
    config = mergekit_config(group, os.path.join(workdir, "mergekit.yml"))
    row = {"read": [], "floor": [], "stream": [], "one_thread": [], "mergekit": [], "inmem": None, "diff": None}
    for r in range(repeat):
        last = r == repeat - 1
        prepare()
        row["read"].append(raw_read(group))
        prepare()
        row["floor"].append(read_write_floor(group, out))
        prepare()
        row["stream"].append(run_child(STREAM, group, out, "{}"))
        if last and mergekit_python:
            os.rename(out, kept)
        shutil.rmtree(out, ignore_errors=True)
        prepare()
        row["one_thread"].append(run_child(STREAM, group, out, json.dumps(ONE_THREAD)))
        shutil.rmtree(out)
        if mergekit_python:
            prepare()
            row["mergekit"].append(run_child(MERGEKIT, group, out, config, python=mergekit_python))
            if last:
                row["diff"] = max_abs_difference(
                    os.path.join(kept, "model.safetensors"), os.path.join(out, "model.safetensors")
                )
                shutil.rmtree(kept)
            shutil.rmtree(out)
    if in_memory:
        prepare()
        row["inmem"] = run_child(INMEM, group, out)
        shutil.rmtree(out)
    return row


def walls(runs):
    return [r["wall"] if isinstance(r, dict) else r for r in runs]


def fmt_runs(runs):
    return ", ".join(f"{x:.2f}" for x in walls(runs))


def report(rows, args, n_params, member_bytes, mergekit_version, loads):
    gib = 2**30
    mk = bool(mergekit_version)
    lines = [
        f"Machine: {machine()}. Date: {datetime.date.today().isoformat()}. "
        f"Python {platform.python_version()}, torch {__import__('torch').__version__}"
        + (f", mergekit {mergekit_version} (its own venv)" if mk else ", mergekit not installed (column skipped)")
        + f". Load average (1 min) at start {loads[0]:.2f}, at end {loads[1]:.2f}.",
        "",
        f"Members: synthetic Whisper small.en-shaped models, {n_params / 1e6:.1f} M parameters, fp32, "
        f"{member_bytes / gib:.2f} GiB each (one model.safetensors per member); every merge is the plain "
        "average. Each run is a fresh subprocess; times are the merge call alone (imports excluded), "
        f"medians of {args.repeat} runs interleaved across the columns (every run listed below). "
        "AoDE streaming = `merge_models` with its defaults (a read-ahead thread, 16 MiB of read "
        "buffers); one thread = `read_ahead=0, max_chunk_bytes=8 MiB`, the driver as it was before; "
        "mergekit-pytorch = mergekit's raw state-dict merge (`merge_method: linear`, weights 1, "
        "`dtype: float32`), run through its own command function; raw read = `cat` of the inputs to "
        "/dev/null; read + write floor = that plus `cat` of one member into a new file (the least any "
        "merge that writes its output costs). Warm: the inputs are in the page cache (read once "
        "before timing), so reading is a memory copy and the ratios are the hardest case. Peak = "
        "VmHWM of the process; for mergekit it includes the input pages it maps (safetensors mmap).",
        "",
        "| N | cache | raw read s | read + write floor s | AoDE streaming s | AoDE one thread s "
        "| mergekit-pytorch s | in-memory s | streaming / raw read | streaming / floor | mergekit / streaming |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        read, floor, stream = median(row["read"]), median(row["floor"]), median(walls(row["stream"]))
        one = median(walls(row["one_thread"]))
        mkw = median(walls(row["mergekit"])) if row["mergekit"] else None
        mk_s = f"{mkw:.2f}" if mkw else "-"
        mk_ratio = f"{mkw / stream:.2f}" if mkw else "-"
        inmem = f"{row['inmem']['wall']:.1f}" if row["inmem"] else "-"
        lines.append(
            f"| {row['n']} | {'cold' if row['cold'] else 'warm'} | {read:.2f} | {floor:.2f} | {stream:.2f} | {one:.2f} "
            f"| {mk_s} | {inmem} | {stream / read:.2f} | {stream / floor:.2f} | {mk_ratio} |"
        )
    lines += [
        "",
        "| N | cache | AoDE streaming peak GiB | of which above import | AoDE one thread peak GiB | peak / one member "
        "| mergekit-pytorch peak GiB | in-memory peak GiB | max abs(AoDE - mergekit) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = max(row["stream"], key=lambda r: r["peak"])
        one = max(r["peak"] for r in row["one_thread"])
        mkp = max(r["peak"] for r in row["mergekit"]) / gib if row["mergekit"] else None
        diff = "-" if row["diff"] is None else f"{row['diff']:.1e}"
        mk_peak = f"{mkp:.2f}" if mkp else "-"
        inmem = f"{row['inmem']['peak'] / gib:.2f}" if row["inmem"] else "-"
        lines.append(
            f"| {row['n']} | {'cold' if row['cold'] else 'warm'} | {s['peak'] / gib:.2f} "
            f"| {(s['peak'] - s['rss_after_import']) / gib:.3f} | {one / gib:.2f} | {s['peak'] / member_bytes:.2f} "
            f"| {mk_peak} | {inmem} | {diff} |"
        )
    lines += ["", "All runs (s):", ""]
    for row in rows:
        lines.append(
            f"- N = {row['n']}, {'cold' if row['cold'] else 'warm'}: raw read {fmt_runs(row['read'])}; floor "
            f"{fmt_runs(row['floor'])}; AoDE streaming {fmt_runs(row['stream'])}; one thread "
            f"{fmt_runs(row['one_thread'])}"
            + (f"; mergekit-pytorch {fmt_runs(row['mergekit'])}" if row["mergekit"] else "")
        )
    warm = [r for r in rows if not r["cold"]]
    ok_mk = all(median(walls(r["stream"])) <= median(walls(r["mergekit"])) for r in rows if r["mergekit"])
    ok_read = [r["n"] for r in warm if median(walls(r["stream"])) <= 2 * median(r["read"])]
    ok_mem = all(max(x["peak"] for x in r["stream"]) <= 1.5 * member_bytes for r in rows)
    extra_mib = max(
        (max(x["peak"] for x in r["stream"]) - max(x["peak"] for x in r["one_thread"])) / 2**20 for r in rows
    )
    lines += [
        "",
        "Targets (medians): AoDE streaming no slower than mergekit-pytorch: "
        + (("met" if ok_mk else "NOT met") if mk else "not measured (no mergekit)")
        + f"; at most 2 x the raw read (warm): met for N in {ok_read or 'none'} of {[r['n'] for r in warm]}; "
        f"peak RSS <= 1.5 x one member: {'met' if ok_mem else 'NOT met'} (the read-ahead adds at most "
        f"{extra_mib:+.0f} MiB to the one-thread peak).",
        "",
        "Reproduce: `python bench/merge.py --mergekit-python <python with mergekit>` (writes ~"
        f"{max(args.sizes) * member_bytes / gib:.0f} GiB of temp files, removed at the end; "
        "`--cold 5` adds cold-cache rows, as root).",
    ]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--workdir", default=tempfile.gettempdir())
    ap.add_argument("--small", action="store_true", help="tiny shapes, for a dry run")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--repeat", type=int, default=5, help="runs per column (medians reported; shared machine)")
    ap.add_argument("--cold", type=int, nargs="*", default=[], help="also time these N with a cold page cache")
    ap.add_argument("--cold-repeat", type=int, default=2)
    ap.add_argument(
        "--mergekit-python", help="an interpreter with mergekit installed (default: this one, if it has it)"
    )
    ap.add_argument(
        "--skip-inmem-above", type=int, default=10, help="skip the in-memory baseline for more members than this"
    )
    args = ap.parse_args()
    if args.cold and os.geteuid() != 0:
        raise SystemExit("--cold drops the page cache (/proc/sys/vm/drop_caches): run as root")
    mergekit_python, mergekit_version = find_mergekit_python(args.mergekit_python)

    kw = dict(d=64, layers=2, ffn=256, vocab=1000) if args.small else {}
    shapes = whisper_small_shapes(**kw)
    vocab = kw.get("vocab", 51864)
    n_params = sum(int(__import__("math").prod(s)) for s in shapes.values())
    workdir = tempfile.mkdtemp(prefix="aode-merge-bench-", dir=args.workdir)
    loads = [os.getloadavg()[0]]
    rows = []
    try:
        t0 = time.perf_counter()
        members = make_members(workdir, max(args.sizes + args.cold), shapes, vocab)
        member_bytes = os.path.getsize(os.path.join(members[0], "model.safetensors"))
        print(
            f"{len(members)} members of {n_params / 1e6:.1f} M parameters "
            f"({member_bytes / 2**30:.2f} GiB each) written in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        plan = [(n, False) for n in args.sizes] + [(n, True) for n in args.cold]
        for n, cold in plan:
            repeat = args.cold_repeat if cold else args.repeat
            row = measure(members[:n], workdir, repeat, mergekit_python, cold, not cold and n <= args.skip_inmem_above)
            row.update(n=n, cold=cold)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    loads.append(os.getloadavg()[0])
    text = report(rows, args, n_params, member_bytes, mergekit_version, loads)
    print(text)
    if not args.no_write and not args.small:
        write_section(text)


if __name__ == "__main__":
    main()
