"""The data path at 100 MB and 1 GB: first start, later start, peak memory.

    python -m benchmarks.data_scale [--sizes_mb 100,1000] [--runs word,char] [--dir /tmp/data_scale]

Builds each corpus deterministically from tiny Shakespeare (its paragraphs,
shuffled with a fixed seed, repeated until the size is reached), then runs the
train CLI on it as a new user would, 5 steps without evaluation:

- word: configs/dnd.py:smoke on corpus "text" (the 2x32 word model);
- char: configs/shakespeare_char.py:smoke with data.path.

Each run is started twice with a fresh token cache: the first start tokenizes
and writes the cache, the second (a new workdir, as a resume or a restarted
job) memory-maps it. `--baseline` adds a start with data.cache=False (the
whole text read and tokenized in memory), at the sizes this machine's memory
allows. The data phase is the summary's time_s.data; the peak RSS is the
child's maximum resident set (os.wait4). The table is printed last.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

ROOT = pathlib.Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_list("sizes_mb", ["100", "1000"], "Corpus sizes, in MB (10^6 bytes).")
flags.DEFINE_list("runs", ["word", "char"], "Which runs: word, char.")
flags.DEFINE_string("dir", "/tmp/lstm_jax_data_scale", "Where the corpora and caches go.")
flags.DEFINE_string(
    "source", str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"), "The text to repeat."
)
flags.DEFINE_list("baseline_mb", ["100"], "Sizes also run with data.cache=False (in memory).")

RUNS = {
    "word": [
        "--config",
        "configs/dnd.py:smoke",
        "--config.data.corpus=text",
    ],
    "char": ["--config", "configs/shakespeare_char.py:smoke"],
}
COMMON = [
    "--config.train.num_steps=5",
    "--config.train.evaluate=False",
    "--config.train.sample_length=0",
    "--config.train.progress=False",
]


def build_corpus(source: pathlib.Path, target: pathlib.Path, size: int, seed: int = 0) -> None:
    """Paragraphs of `source` in a new seeded order per repeat, until `size` bytes."""
    if target.is_file() and target.stat().st_size >= size:
        return
    paragraphs = [p.encode() + b"\n\n" for p in source.read_text().split("\n\n")]
    rng = np.random.default_rng(seed)
    written = 0
    tmp = target.with_suffix(".part")
    with open(tmp, "wb") as f:
        while written < size:
            for i in rng.permutation(len(paragraphs)):
                f.write(paragraphs[i])
                written += len(paragraphs[i])
                if written >= size:
                    break
    tmp.rename(target)


def main(argv):
    del argv
    base = pathlib.Path(FLAGS.dir)
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    for size_mb in map(int, FLAGS.sizes_mb):
        corpus = base / f"shakespeare_{size_mb}mb.txt"
        t = time.perf_counter()
        build_corpus(pathlib.Path(FLAGS.source), corpus, size_mb * 10**6)
        print(f"{corpus}: {corpus.stat().st_size:,} bytes ({time.perf_counter() - t:.1f} s)")
        for run in FLAGS.runs:
            cache = base / f"cache_{run}_{size_mb}"
            shutil.rmtree(cache, ignore_errors=True)
            starts = [("first start", ()), ("later start", ())]
            if str(size_mb) in FLAGS.baseline_mb:
                starts.insert(0, ("in memory (no cache)", ("--config.data.cache=False",)))
            for label, extra in starts:
                workdir = base / f"wd_{run}_{size_mb}"
                shutil.rmtree(workdir, ignore_errors=True)
                summary, rss, wall, log = start(run, corpus, workdir, cache, *extra)
                header = next((x for x in log.splitlines() if "tokens, vocab" in x), "")
                rows.append(
                    (f"{run} {size_mb} MB", label, summary["time_s"]["data"], rss, wall, header)
                )
                print(rows[-1], flush=True)
    print("\n| run | start | data phase (s) | peak RSS (GB) | whole run (s) |")
    print("|---|---|--:|--:|--:|")
    for name, label, data_s, rss, wall, _ in rows:
        print(f"| {name} | {label} | {data_s:.1f} | {rss / 1e9:.2f} | {wall:.0f} |")


def start(run: str, corpus: pathlib.Path, workdir: pathlib.Path, cache: pathlib.Path, *extra):
    """One train CLI start: (summary, peak RSS in bytes, wall seconds, its output).
    The peak is the child's ru_maxrss from wait4 (KiB on Linux)."""
    cmd = [
        sys.executable,
        "-m",
        "lstm_jax.train",
        *RUNS[run],
        f"--config.data.path={corpus}",
        f"--config.data.cache_dir={cache}",
        f"--workdir={workdir}",
        *COMMON,
        *extra,
    ]
    begin = time.perf_counter()
    with (
        open(workdir.parent / "stdout.txt", "wb") as out,
        open(workdir.parent / "stderr.txt", "wb") as err,
    ):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - begin
    stdout = (workdir.parent / "stdout.txt").read_text()
    stderr = (workdir.parent / "stderr.txt").read_text()
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{stderr[-3000:]}")
    summary = json.loads(stdout[stdout.index("{") :])
    return summary, usage.ru_maxrss * 1024, wall, stdout + stderr


if __name__ == "__main__":
    app.run(main)
