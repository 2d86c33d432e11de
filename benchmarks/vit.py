"""The ViT suite: sequax's L2P and SimpleCIL on a small ViT against plain PyTorch loops doing
the same work, in the same run (issue 19, item 6; the "vit" section of docs/benchmarks.md).

    python -m benchmarks.vit                                     # from the repository root
    python -m benchmarks.vit --train_per_task=200 --output=      # quick, prints
    python -m benchmarks.vit --update_docs                       # + docs/benchmarks.md

The stream: `configs/vit_split_mnist.py` ("split": real MNIST, 5 tasks of 2 classes in
order, one epoch per task, batch 32) without `config.model.weights`: a random initialisation
of the same ViT (width 64, depth 4, 4 heads, MLP 128, 4x4 patches on 28x28), so the suite
needs no pretrained checkpoint; speed does not depend on the weights. `--train_per_task`
examples per task (default 2,000; 0: all, about 12,000) and `--test_per_task` test examples
(default 1,000; 0: all, about 2,000): every task's test set is evaluated after each task and
once untrained, on both sides. L2P: pool 10, length 5, top-k 5, pull 0.1, batchwise
selection, Adam lr 2e-3 re-created each task; SimpleCIL: class means of the frozen ViT's
features, a cosine classifier.

Each cell runs in its own process (`--single=METHOD,RUN --json_out=FILE`), so its peak RSS and
time to result are that run's. sequax runs each method twice on a fresh compilation cache of
its own (`SEQUAX_COMPILATION_CACHE`): cold (every program compiled) and warm (loaded, as a
rerun is); L2P once more with `cache_examples=0` ("nocache": the frozen query computed by a
ViT pass in every step, as the reference does) against the default suite's cache of the
largest task (the queries computed once per task in `start_task`). Its figures are the run's
summary.json `timings`: `train_samples_per_s`, `time_to_result` (process start to summary),
the `end_task` section (start_task and end_task: the query cache, SimpleCIL's prototypes), and
the compilations per program (`run_steps` once per run, checked: exit status 1 otherwise).

The PyTorch side (`benchmarks/torch_prompt.py`) is an eager float32 loop on the same task
stream (`launch.torch_loop.task_stream`), on one thread (`torch.set_num_threads(1)`, as
`sequax.launch.bench`) and, as "torch all", on torch's default threads (every core): at
batch 32 through a ViT the matrix products are large enough for more threads to pay.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags, logging

from sequax.configs import vit_split_mnist
from sequax.launch import bench  # its flags: --methods, --tasks, --train_per_task, --output, ...
from sequax.launch.common import define_update_docs, machine

FLAGS = flags.FLAGS
define_update_docs()
_TEST_PER_TASK = flags.DEFINE_integer(
    "test_per_task", 1000, "Test examples per task, evaluated after each task; 0 = all."
)
_TORCH_ALL = flags.DEFINE_bool(
    "torch_all_threads", True, "Also run the PyTorch loops on torch's default threads."
)
REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("l2p", "simplecil")
SEQUAX_RUNS = ("cold", "warm", "nocache")  # nocache: L2P with cache_examples=0 only
TORCH_RUNS = ("torch", "torch_all")
RUNS = SEQUAX_RUNS + TORCH_RUNS
TRAIN_PER_TASK, SEED = 2000, 0
# L2P's defaults (LAMDA-PILOT exps/l2p.json), written into the config so both sides read them.
TRAIN_PROGRAMS = ("run_steps", "step_at")
L2P_HYPER = dict(pool_size=10, prompt_length=5, top_k=5, pull_coeff=0.1, batchwise_prompt=True)
LABELS = dict(cold="sequax cold", warm="sequax warm", nocache="sequax no cache",
              torch="torch 1 thread", torch_all="torch all threads")  # fmt: skip


def runs_of(method: str, torch_all: bool = True) -> tuple[str, ...]:
    """The cells of `method`, in the table's order."""
    runs = [r for r in RUNS if method == "l2p" or r != "nocache"]
    return tuple(r for r in runs if torch_all or r != "torch_all")


def make_config(method: str, tasks: int = 0, train_per_task: int = 0, test_per_task: int = 0,
                cache: bool = True) -> ml_collections.ConfigDict:  # fmt: skip
    """The sequax config of one cell (the torch loop reads the same one): the ViT Split MNIST
    config without pretrained weights."""
    config = vit_split_mnist.make(method)
    model = config.model.to_dict()
    model.pop("weights", None)
    config.model = ml_collections.ConfigDict(model)
    config.seed = SEED
    config.data.num_tasks = tasks or 5
    config.data.train_per_task = train_per_task
    config.data.test_per_task = test_per_task
    if method == "l2p":
        config.algorithm.update(L2P_HYPER)
        config.algorithm.cache_examples = (train_per_task or vit_split_mnist.CACHE) if cache else 0
    config.checkpoint.enabled = False  # like the PyTorch loop: throughput, not resumability
    return config


# ---------------- The cells ------------------------------------------------------------------
def run_sequax(config) -> dict:
    """One `loop.run`; its figures read back from the run's summary.json."""
    from sequax.engine import loop

    with tempfile.TemporaryDirectory() as workdir:
        loop.run(config, workdir, verbose=False)
        summary = json.loads((Path(workdir) / "summary.json").read_text())
        matrix = json.loads((Path(workdir) / "accuracy_matrix.json").read_text())
    t = summary["timings"]
    programs = t["compilations"]
    m = np.asarray(matrix["class_il"] if isinstance(matrix, dict) else matrix, np.float64)
    return dict(
        samples_per_s=t["train_samples_per_s"],
        train_samples=int(t["train_samples"]),
        time_to_result=t["time_to_result"],
        **{k: t[k] for k in ("startup", "data", "compile", "train", "end_task", "eval", "wall")},
        compile_count=t["compile_count"],
        cache_hits=t["cache_hits"],
        # The training program: `run_steps` (a fori_loop over a dispatch's steps), or `step_at`
        # (one step per dispatch: the engine's host loop, its choice for a step with a
        # convolution, here the ViT's patch embedding, on XLA:CPU; engine/step.py).
        run_steps=sum(programs.get(p, {}).get("count", 0) for p in TRAIN_PROGRAMS),
        train_program="+".join(p for p in TRAIN_PROGRAMS if programs.get(p, {}).get("count")),
        compilations={name: p["count"] for name, p in programs.items()},
        matrix=(m if m.ndim == 2 else m[0]).tolist(),
    )


def run_single(spec: str, json_out: str) -> None:
    """One cell, "METHOD,RUN" (a run of `RUNS`), written to `json_out`."""
    method, run = spec.split(",")
    config = make_config(method, FLAGS.tasks, FLAGS.train_per_task, _TEST_PER_TASK.value,
                         cache=run != "nocache")  # fmt: skip
    if run in SEQUAX_RUNS:
        if FLAGS.sequax_cores > 0:  # before JAX starts its thread pool (as bench)
            cores = sorted(os.sched_getaffinity(0))[: FLAGS.sequax_cores]
            os.sched_setaffinity(0, set(cores))
        result = run_sequax(config)
    else:
        from benchmarks.torch_prompt import run_torch

        result = run_torch(config, threads=1 if run == "torch" else 0)
    result["acc"] = 100.0 * float(np.mean(result["matrix"][-1]))
    # Work per second with the task boundaries: the query cache, SimpleCIL's feature pass.
    busy = result["train"] + result["end_task"]
    result["work_samples_per_s"] = result["train_samples"] / busy if busy > 0 else 0.0
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB
    result.update(method=method, run=run)
    Path(json_out).write_text(json.dumps(result))


def child(method: str, run: str, folder: str) -> dict | None:
    """Cell (`method`, `run`) in its own process; the cold and warm runs of a method share a
    compilation cache of their own under `folder` (the no-cache run has its own)."""
    out = os.path.join(folder, f"{method}_{run}.json")
    cache = f"xla_{method}" + ("_nocache" if run == "nocache" else "")
    env = {**os.environ, "SEQUAX_COMPILATION_CACHE": os.path.join(folder, cache)}
    command = [sys.executable, "-m", "benchmarks.vit", f"--single={method},{run}",
               f"--json_out={out}", f"--tasks={FLAGS.tasks}",
               f"--train_per_task={FLAGS.train_per_task}",
               f"--test_per_task={_TEST_PER_TASK.value}",
               f"--sequax_cores={FLAGS.sequax_cores}"]  # fmt: skip
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=3600,
                          cwd=REPO_ROOT, env=env)  # fmt: skip
    if done.returncode != 0:
        print(f"  FAILED ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(Path(out).read_text())


def suite(methods, torch_all: bool) -> tuple[dict, float]:
    """{(method, run): result} of every cell, and the suite's seconds."""
    start, cells = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as folder:
        for method in methods:
            for run in runs_of(method, torch_all):
                t0 = time.perf_counter()
                print(f"vit {method} {run} ...", end=" ", flush=True)
                cells[(method, run)] = c = child(method, run, folder)
                seconds, said = time.perf_counter() - t0, "failed"
                if c:
                    said = (
                        f"{c['samples_per_s']:,.0f} samples/s ({c['work_samples_per_s']:,.0f} "
                        f"with task boundaries), time to result {c['time_to_result']:.1f}s, "
                        f"acc {c['acc']:.2f}% ({seconds:.0f}s)"
                    )
                print(said, flush=True)
    return cells, time.perf_counter() - start


def bad_compiles(cells: dict) -> list[str]:
    """The sequax cells whose training program (`run_steps` or `step_at`) was not compiled
    (or loaded) exactly once."""
    sequax = [(m, r, c) for (m, r), c in cells.items() if c and r in SEQUAX_RUNS]
    return [f"{m} {r}: the training program compiled {c['run_steps']} times"
            for m, r, c in sequax if c["run_steps"] != 1]  # fmt: skip


# ---------------- Report ---------------------------------------------------------------------
def rate(value: float) -> str:
    return f"{value:,.0f}" if value > 0 else "–"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if a > 0 and b > 0 else "–"


def table(cells: dict, methods, torch_all: bool = True) -> str:
    lines = [
        "| method | run | train samples/s | × torch 1 | samples/s with task boundaries "
        "| × torch 1 | train s | start/end_task s | time to result s | torch 1 ÷ this "
        "| compile s | training program compiles | acc % | peak RSS MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for method in methods:
        base = cells.get((method, "torch"))
        for run in runs_of(method, torch_all):
            c = cells.get((method, run))
            if c is None:
                lines.append(f"| {method.upper()} | {LABELS[run]} | failed |" + " |" * 11)
                continue
            speed = work = ttr = "–"
            if base and run != "torch":
                speed = ratio(c["samples_per_s"], base["samples_per_s"])
                work = ratio(c["work_samples_per_s"], base["work_samples_per_s"])
                ttr = ratio(base["time_to_result"], c["time_to_result"])
            compiled = "– | –"
            if run in SEQUAX_RUNS:
                compiled = f"{c['compile']:.1f} | {c['run_steps']} ({c['train_program']})"
            lines.append(
                f"| {method.upper()} | {LABELS[run]} | {rate(c['samples_per_s'])} | {speed} "
                f"| {rate(c['work_samples_per_s'])} | {work} | {c['train']:.1f} "
                f"| {c['end_task']:.1f} | {c['time_to_result']:.1f} | {ttr} | {compiled} "
                f"| {c['acc']:.2f} | {c['rss_mib']:.0f} |"
            )
    return "\n".join(lines)


def summary(cells: dict, methods) -> str:
    lines = [
        "| method | samples/s with task boundaries: sequax ÷ torch 1 thread (cold, warm) "
        "| ÷ torch all threads (warm) | time to result: torch 1 thread ÷ sequax (cold, warm) "
        "| acc %: sequax cold, torch 1 thread (Δ points) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for method in methods:
        cold, warm, base = (cells.get((method, r)) for r in ("cold", "warm", "torch"))
        if not (cold and warm and base):
            continue
        every = cells.get((method, "torch_all"))
        work = ", ".join(ratio(c["work_samples_per_s"], base["work_samples_per_s"])
                         for c in (cold, warm))  # fmt: skip
        all_threads = (
            ratio(warm["work_samples_per_s"], every["work_samples_per_s"]) if every else "–"
        )
        ttr = ", ".join(ratio(base["time_to_result"], c["time_to_result"]) for c in (cold, warm))
        lines.append(
            f"| {method.upper()} | {work} | {all_threads} | {ttr} | {cold['acc']:.2f}, "
            f"{base['acc']:.2f} ({cold['acc'] - base['acc']:+.2f}) |"
        )
    on, off = cells.get(("l2p", "cold")), cells.get(("l2p", "nocache"))
    if on and off:
        lines += [
            "",
            "| L2P frozen-query cache | train samples/s | samples/s with task boundaries "
            "| start/end_task s |",
            "| --- | ---: | ---: | ---: |",
            f"| on (`cache_examples` = the largest task) | {rate(on['samples_per_s'])} "
            f"| {rate(on['work_samples_per_s'])} | {on['end_task']:.1f} |",
            f"| off (`cache_examples=0`) | {rate(off['samples_per_s'])} "
            f"| {rate(off['work_samples_per_s'])} | {off['end_task']:.1f} |",
            f"| on ÷ off | {ratio(on['samples_per_s'], off['samples_per_s'])} "
            f"| {ratio(on['work_samples_per_s'], off['work_samples_per_s'])} | |",
        ]
    return "\n".join(lines)


HOW_TO_READ = """\
### How to read this

- **train samples/s**: training examples per second of time inside the training steps;
  sequax's is summary.json's `train_samples_per_s` (its compiled dispatches, each blocking
  on its metrics), the torch loop's the time of its step loop. Compilation, evaluation and
  the task boundaries are not in it. SimpleCIL trains nothing: sequax's steps are the
  engine's empty ones (a constant zero loss, every parameter frozen), the torch loop has no
  step at all ("–"); its work is the feature pass at each task's end.
- **samples/s with task boundaries**: the same examples per second of training plus
  start_task/end_task time (summary.json's `end_task` section on sequax's side): L2P's
  frozen-query cache (one ViT pass over the task at its start), SimpleCIL's prototypes (one
  ViT pass over the task at its end, batches of 128 on both sides). The fair column for
  comparing the frameworks; **× torch 1** divides by the 1-thread torch row's.
  JAX dispatches asynchronously: the query cache started in `start_task` may finish inside
  the first training dispatch and be counted as training; this column counts it either way.
- **time to result**: process start (from /proc) to the summary, on both sides: the
  interpreter, imports, reading MNIST, (sequax) compiling or loading its programs, training,
  the task boundaries and the 6 evaluations (untrained, then after each task, every task's
  test set). **torch 1 ÷ this**: how many times shorter than the 1-thread torch loop's.
  **cold**: a fresh compilation cache; **warm**: the same command again on that cache.
  sequax scans each test set in batches of `eval.batch_size` (1,000), the last one padded:
  1,000 test examples per task is one whole batch, no padding.
- **sequax no cache**: L2P with `cache_examples=0`: the query (a frozen ViT pass without
  prompts) is computed in every step, as the reference and the torch loop do; with the
  cache it is computed once per task in `start_task` and read by example index in the step.
- **training program compiles**: how many times the run compiled (or loaded) its training
  program (summary.json's `timings.compilations`); 1 is one program for all 5 tasks, named
  in brackets: `run_steps` (a `fori_loop` of steps) or `step_at` (one step per dispatch,
  engine/step.py's `HostLoopSteps`, which the engine may choose on XLA:CPU for a step with
  a convolution, here the ViT's patch embedding).
- **acc %**: final class-IL accuracy (the mean of the accuracy matrix's last row, every
  class a candidate) of a randomly initialised, frozen ViT: low, and different between the
  frameworks (different random draws of the ViT, prompts, keys, head and example order); it
  is here to show both sides do the same work, not to rank them.
- **peak RSS**: `ru_maxrss` of the cell's own process (the torch children never import JAX).
- **torch all threads**: torch's default intra-op pool, one OpenMP thread per core, whose
  threads wait for each other at every operation: on cores that other jobs also use, one
  descheduled thread stalls the rest, and the cell can run many times slower than on one
  thread. Read it (and **÷ torch all threads**) only from a run without load.
"""


def section(cells: dict, methods, header_lines: list[str], info: dict, *, pinned: int = 0,
            torch_all: bool = True, train_per_task: int = TRAIN_PER_TASK,
            test_per_task: int = 1000) -> str:  # fmt: skip
    """The markdown of the suite (between the `<!-- vit -->` markers); `pinned`: the cores
    sequax was pinned to (`--sequax_cores`, 0: all); `torch_all`: the all-thread torch cells
    ran; the per-task example counts of the stream (0: all)."""
    cores, load = info["cores"], info["load"][0]
    threads = f"on all {cores} cores, XLA's default threading"
    if pinned:
        threads = f"pinned to {pinned} core(s) with `sched_setaffinity`"
    header_lines = [line for line in header_lines if not line.startswith("- **Quick run**")]
    lines = [
        "## A small ViT: L2P and SimpleCIL against plain PyTorch loops",
        "",
        "Each cell in its own process (`benchmarks/vit.py`, `benchmarks/torch_prompt.py`).",
        *header_lines,
        f"- Threads: sequax {threads} (XLA_FLAGS: {info['xla_flags']}); torch "
        "`set_num_threads(1)`" + (f" and its default ({cores} threads)" if torch_all else "") + ".",
        "- Stream: `configs/vit_split_mnist.py` without pretrained weights (a random, frozen "
        "ViT: width 64, depth 4, 4 heads, MLP 128, 4×4 patches, 28×28), real MNIST, 5 tasks × "
        f"2 classes, {train_per_task or 'all'} training examples per task, one epoch, "
        f"batch 32; {test_per_task or 'all'} test examples per task, every task's test "
        "set evaluated untrained and after each task. L2P: pool 10, length 5, top-k 5, pull "
        "0.1, batchwise selection, Adam lr 2e-3 (re-created each task). SimpleCIL: class "
        "means of the frozen ViT's features, cosine classifier.",
    ]
    if load > 0.5 * cores:
        lines.append(
            f"- **Taken under load** (load average {load:.2f} on {cores} cores at the start: "
            "other jobs were running): the numbers are indicative only."
        )
    lines += ["", "### Results", "", table(cells, methods, torch_all), "",
              summary(cells, methods), ""]  # fmt: skip
    bad = bad_compiles(cells)
    lines += [f"**Not one program per run**: {'; '.join(bad)}.", ""] if bad else []
    lines += [HOW_TO_READ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    logging.set_verbosity(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.single:  # one cell, in this process
        run_single(FLAGS.single, FLAGS.json_out)
        return
    methods = [m for m in FLAGS.methods.split(",") if m]
    if set(methods) - set(METHODS):
        raise app.UsageError(f"--methods={FLAGS.methods}: use {', '.join(METHODS)}")
    paths = bench.documents(FLAGS.output, FLAGS.update_docs, REPO_ROOT)  # before any cell
    info = machine()
    cells, seconds = suite(methods, _TORCH_ALL.value)
    header = bench.header(info, seconds, "vit", program="benchmarks.vit")
    text = section(cells, methods, header, info, pinned=FLAGS.sequax_cores,
                   torch_all=_TORCH_ALL.value, train_per_task=FLAGS.train_per_task,
                   test_per_task=_TEST_PER_TASK.value)  # fmt: skip
    print("\n" + text.split("### How to read this")[0].rstrip())
    bench.publish("vit", text, paths)
    bad = bad_compiles(cells)
    if bad or not all(cells.values()):
        sys.exit(f"vit: {'; '.join(bad) or 'a cell failed'}")


if __name__ == "__main__":
    FLAGS.set_default("methods", ",".join(METHODS))  # bench's flags; their defaults are bench's
    FLAGS.set_default("train_per_task", TRAIN_PER_TASK)
    app.run(main)
