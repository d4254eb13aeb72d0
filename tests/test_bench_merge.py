"""bench/merge.py: its RESULTS.md section writer and a tiny end-to-end run."""

import importlib.util
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "merge.py")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_merge", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_section_replaces_only_the_merge_tables(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmarks\n\n## Merge\n\nold table\n\n### Decoding\n\nkept\n\n## Full-size\n\nkept too\n")
    load_bench().write_section("new table", path=str(results))
    assert results.read_text() == (
        "# Benchmarks\n\n## Merge\n\nnew table\n\n### Decoding\n\nkept\n\n## Full-size\n\nkept too\n"
    )


def test_small_run_reports_every_column(tmp_path):
    res = subprocess.run(
        [sys.executable, SCRIPT, "--small", "--sizes", "2", "--repeat", "1", "--no-write", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert "| 2 | warm |" in out
    assert "AoDE streaming" in out and "read + write floor" in out
    assert "mergekit" in out  # a column, or why it is skipped
    assert os.listdir(tmp_path) == []  # temp files removed
