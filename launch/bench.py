"""The benchmarks: sequax against a plain PyTorch loop (PROTOCOLS §E), in the same run.

    python -m sequax.launch.bench                         # runs/bench/benchmarks.md
    python -m sequax.launch.bench --suites=time           # time to result only
    python -m sequax.launch.bench --tasks=2 --train_per_task=3000 --output=  # quick, prints only
    python -m sequax.launch.bench --update_docs           # + the repository's docs/benchmarks.md

Two suites: `time` (process start to summary, sequax cold and warm against torch, with the
wall's breakdown: `launch/time_to_result.py`) and `compare` (training throughput). Each
replaces its own section of the output file (between `<!-- time -->` or `<!-- compare -->`
markers), leaving the rest of the document as it is. The output file is `--output`, by default
runs/bench/benchmarks.md under the current folder: bench has no workdir (its cells run in
temporary folders), so its document goes where `make demo` and `reproduce` put their runs,
never into the repository it may have been installed from. `--update_docs` also writes the
sections into the repository's docs/benchmarks.md (from a source checkout only: one line and
exit 2 before anything runs otherwise). The other suites (at scale, streaming,
the Fisher, one GPU) are programs of the repository, not of the package: `python -m
benchmarks.scale` etc. from the repository root (benchmarks/README.md); they run this
module's cells (`--single`).

Workloads: PMNIST-10 (Permuted MNIST, 10 tasks, MLP 784-256-256-10, SGD lr 0.1, batch 128) and
SMNIST-5 (Split MNIST class-IL, MLP 784-100-100-10, SGD lr 0.03, batch 10), one epoch per
task, methods naive, ER (reservoir of 500, replay batch = training batch) and online EWC
(γ 1, empirical Fisher over the whole task). Every (workload, method, framework) runs in its
own subprocess (`--single=workload,method,framework --json_out=FILE`), so the reported peak
RSS is that run's alone. The PyTorch side runs on one thread (`torch.set_num_threads(1)`);
JAX/XLA keeps its default threading.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from sequax.configs import common
from sequax.engine.clock import SECTIONS
from sequax.launch.common import define_update_docs, machine, reject_stray, repository_docs
from sequax.launch.time_to_result import report as time_report
from sequax.launch.time_to_result import time_suite
from sequax.launch.torch_loop import run_torch

_SUITES = flags.DEFINE_string(
    "suites", "time,compare", "Comma-separated: time (time to result), compare (throughput)."
)
_WORKLOADS = flags.DEFINE_string("workloads", "pmnist10,smnist5", "Comma-separated workloads.")
_METHODS = flags.DEFINE_string("methods", "naive,er,ewc", "Comma-separated methods.")
_TASKS = flags.DEFINE_integer(
    "tasks", 0, "Override the number of tasks (quick runs); 0 = protocol."
)
_TRAIN_PER_TASK = flags.DEFINE_integer(
    "train_per_task", 0, "Subsample each task's training set; 0 = all."
)
_OUTPUT = flags.DEFINE_string(
    "output", "runs/bench/benchmarks.md", "Markdown report; empty = print only."
)
define_update_docs()  # the suites of benchmarks/ importing this module take it too
_SINGLE = flags.DEFINE_string(
    "single", "", "Internal: run one 'workload,method,framework' and exit."
)
_SEQUAX_CORES = flags.DEFINE_integer(
    "sequax_cores",
    0,
    "Pin the sequax runs to this many cores (sched_setaffinity, the way JAX's "
    "thread pool is sized); 0 = all cores. 1 compares core for core with the 1-thread torch loop.",
)
_JSON_OUT = flags.DEFINE_string("json_out", "", "Internal: where --single writes its result.")
_TORCH_DEVICE = flags.DEFINE_string(
    "torch_device",
    "cpu",
    "Where the PyTorch loop runs: cpu (one thread) or cuda (the GPU section, "
    "`python -m benchmarks.gpu`).",
)

WORKLOADS = {
    "pmnist10": dict(
        title="PMNIST-10",
        scenario="permuted",
        num_tasks=10,
        widths=(256, 256),
        lr=0.1,
        batch=128,
        ewc_lam=1.4,
    ),  # lam 1.4 = DER's e_lambda 0.7
    "smnist5": dict(
        title="SMNIST-5",
        scenario="split",
        num_tasks=5,
        widths=(100, 100),
        lr=0.03,
        batch=10,
        ewc_lam=180.0,
    ),  # lam 180 = DER's e_lambda 90
    "rmnist20": dict(
        title="R-MNIST-20",
        scenario="rotated",
        num_tasks=20,
        widths=(100, 100),
        lr=0.2,
        batch=128,
        ewc_lam=1.4,
    ),  # PROTOCOLS §A: DER's R-MNIST, sgd lr 0.2, batch 128
}
METHODS = ("naive", "er", "ewc")  # the torch loop implements these
FRAMEWORKS = ("sequax", "torch")
CAPACITY = 500
SEED = 0


def make_config(workload: str, method: str, tasks: int, train_per_task: int):
    """The sequax config of one benchmark cell; the torch loop reads the same config."""
    w = WORKLOADS[workload]
    hyper = {
        "naive": {},
        "er": dict(capacity=CAPACITY, replay_batch=w["batch"]),
        "ewc": dict(
            lam=w["ewc_lam"],
            gamma=1.0,
            online=True,
            fisher_labels="empirical",
            likelihood_weighted=False,
        ),
        "derpp": dict(
            capacity=CAPACITY, replay_batch=w["batch"], alpha=0.2, beta=0.5
        ),  # PROTOCOLS §E
    }[method]
    config = common.der_config(w["scenario"], method, lr=w["lr"], **hyper)
    config.seed = SEED
    config.data.num_tasks = tasks or w["num_tasks"]
    config.data.train_per_task = train_per_task
    config.model.widths = w["widths"]
    config.training.batch_size = w["batch"]
    config.checkpoint.enabled = False  # like the PyTorch loop: throughput, not resumability
    return config


# ---------------- sequax ---------------------------------------------------------------------
def run_sequax(config) -> dict:
    from sequax.engine import loop

    with tempfile.TemporaryDirectory() as workdir:
        result = loop.run(config, workdir, verbose=False)
    t = result.timings
    matrices = result.class_il if result.class_il.ndim == 3 else result.class_il[None]
    return dict(
        **{key: t[key] for key in SECTIONS},  # the wall's breakdown (engine.clock)
        time_to_result=t["time_to_result"],  # process start to summary
        compile_count=t["compile_count"],
        cache_hits=t["cache_hits"],
        compilations=t["compilations"],
        samples_per_s=t["train_samples_per_s"],
        train_samples=int(t["train_samples"]),
        matrix=matrices[0].tolist(),
        accs=[100.0 * float(np.mean(m[-1])) for m in matrices],
        train_steps=int(t["train_steps"]),
        devices=int(t["devices"]),
        runs=len(matrices),
        step_flops=t.get("step_flops", 0.0),
        program_bytes=t.get("program_bytes", 0.0),
        device_peak_bytes=t.get("device_peak_bytes"),
        eval_flops=2.0 * mlp_macs(config) * t["eval_examples"]
        if "widths" in config.model
        else None,
    )


def mlp_macs(config) -> int:
    """Multiply-adds of one forward pass of the config's MLP on one 28x28 image."""
    widths = (784, *config.model.widths, 10)
    return sum(a * b for a, b in itertools.pairwise(widths))


def run_single(spec: str, json_out: str) -> None:
    """One cell: "workload,method,framework[,rN][,mK]" (N vmapped runs split over K devices:
    the cells of `benchmarks/scale.py` and `benchmarks/gpu.py`)."""
    workload, method, framework, *extra = spec.split(",")
    config = make_config(workload, method, _TASKS.value, _TRAIN_PER_TASK.value)
    for option in extra:
        if option.startswith("r"):
            config.runs = int(option[1:])
        elif option.startswith("m"):  # split the runs over this many devices (mesh runs axis)
            config.mesh.runs = int(option[1:])
        elif option == "checkpoints":  # as a user runs it: a verified checkpoint every task
            config.checkpoint.enabled = True
    if framework == "sequax" and _SEQUAX_CORES.value > 0:  # before jax is imported
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: _SEQUAX_CORES.value]))
    result = run_sequax(config) if framework == "sequax" else run_torch(config, _TORCH_DEVICE.value)
    result["acc"] = 100.0 * float(np.mean(result["matrix"][-1]))
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    result.update(workload=workload, method=method, framework=framework)
    Path(json_out).write_text(json.dumps(result))


def run_child(
    workload: str,
    method: str,
    framework: str,
    folder: str,
    *,
    options: str = "",
    env=None,
    name: str = "",
) -> dict | None:
    """One cell in its own process (`--single`); `options` appended to its spec, `env` the
    child's environment (None: this one's). Adds `process_wall`: launch to exit, as seen here."""
    out = os.path.join(folder, f"{workload}_{method}_{framework}{name}.json")
    spec = ",".join(filter(None, (workload, method, framework, options)))
    command = [
        sys.executable,
        "-m",
        "sequax.launch.bench",
        f"--single={spec}",
        f"--json_out={out}",
        f"--tasks={_TASKS.value}",
        f"--train_per_task={_TRAIN_PER_TASK.value}",
        f"--sequax_cores={_SEQUAX_CORES.value}",
        f"--torch_device={_TORCH_DEVICE.value}",
    ]
    t0 = time.perf_counter()
    done = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"  FAILED ({done.returncode}):\n{done.stderr[-3000:]}", file=sys.stderr)
        return None
    return {**json.loads(Path(out).read_text()), "process_wall": time.perf_counter() - t0}


# ---------------- Report ---------------------------------------------------------------------
def cell(results, workload, method, framework):
    return results.get((workload, method, framework))


def ratios(results, workload, method):
    s, t = cell(results, workload, method, "sequax"), cell(results, workload, method, "torch")
    if s is None or t is None:
        return None
    return dict(
        speed=s["samples_per_s"] / t["samples_per_s"],
        wall=t["wall"] / s["wall"],
        acc=s["acc"] - t["acc"],
    )


def tables(results, workloads, methods) -> str:
    lines = [
        "| workload | method | framework | samples/s | ratio | wall s | compile s | end_task s "
        "| eval s | acc % | peak RSS MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in workloads:
        for m in methods:
            r = ratios(results, w, m)
            for f in FRAMEWORKS:
                c = cell(results, w, m, f)
                name = [WORKLOADS[w]["title"], m, f]
                if c is None:
                    lines.append("| " + " | ".join(name) + " | failed |" + " |" * 8)
                    continue
                ratio = f"{r['speed']:.2f}×" if (r and f == "sequax") else ""
                compile_s = f"{c['compile']:.1f}" if f == "sequax" else "–"
                lines.append(
                    f"| {' | '.join(name)} | {c['samples_per_s']:,.0f} | {ratio} | {c['wall']:.1f} "
                    f"| {compile_s} | {c['end_task']:.2f} | {c['eval']:.2f} | {c['acc']:.2f} "
                    f"| {c['rss_mib']:.0f} |"
                )
    lines += [
        "",
        "| workload | method | samples/s: sequax / torch | wall: torch / sequax "
        "| acc: sequax − torch (points) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for w in workloads:
        for m in methods:
            r = ratios(results, w, m)
            if r:
                lines.append(
                    f"| {WORKLOADS[w]['title']} | {m} | {r['speed']:.2f}× | {r['wall']:.2f}× "
                    f"| {r['acc']:+.2f} |"
                )
    return "\n".join(lines)


def targets(results, workloads, methods) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL) for the issue's targets that this run measured."""
    rows = []

    def add(name, measured, ok):
        rows.append((name, measured, "PASS" if ok else "FAIL"))

    for m in methods:
        r = ratios(results, "smnist5", m) if "smnist5" in workloads else None
        if r:
            add(
                f"SMNIST-5 {m}: sequax ≥ 3× torch samples/s",
                f"{r['speed']:.2f}×",
                r["speed"] >= 3.0,
            )
    for m, floor in (("naive", 0.9), ("ewc", 1.5)):
        r = ratios(results, "pmnist10", m) if ("pmnist10" in workloads and m in methods) else None
        if r:
            add(
                f"PMNIST-10 {m}: sequax ≥ {floor}× torch samples/s",
                f"{r['speed']:.2f}×",
                r["speed"] >= floor,
            )
    for m in methods:
        r = ratios(results, "pmnist10", m) if "pmnist10" in workloads else None
        if r:
            add(
                f"PMNIST-10 {m}: accuracy within 2 points of torch",
                f"{r['acc']:+.2f}",
                abs(r["acc"]) <= 2.0,
            )
    naive, er = (
        cell(results, "smnist5", "naive", "sequax"),
        cell(results, "smnist5", "er", "sequax"),
    )
    if naive:
        add(
            "SMNIST-5 naive (sequax) ≈ 20% (18–22)",
            f"{naive['acc']:.2f}%",
            18.0 <= naive["acc"] <= 22.0,
        )
    if er:
        add("SMNIST-5 ER-500 (sequax) > 80%", f"{er['acc']:.2f}%", er["acc"] > 80.0)
    return rows


HOW_TO_READ = """\
### How to read this

- **samples/s** counts training examples (the current batch only, not replayed ones) per second
  of time inside the training loop: per-step batch gathering, replay sampling, reservoir
  insertion and the EWC penalty are included; compilation, end-of-task work (the Fisher) and
  evaluation are excluded and reported as **compile s**, **end_task s** and **eval s**.
  sequax's training time is the time inside its compiled multi-step dispatches (each
  dispatch blocks on its metrics, so the timing is honest).
- **wall s** is the whole stream in the child process after imports: loading MNIST, building
  the tasks, (sequax) placing each task on the device and compiling, training, the Fisher and
  evaluating every task after each task (plus the untrained model once, on both sides).
- **ratio** is sequax samples/s over torch samples/s; the second table adds torch wall /
  sequax wall and the final-accuracy difference. **acc %** is the mean of the last row of the
  accuracy matrix (class-IL for SMNIST-5, domain-IL for PMNIST-10).
- **peak RSS** is `ru_maxrss` of the child process that ran that one cell (each cell runs in
  its own process; the torch child never imports JAX, the sequax child never imports torch).
- The PyTorch side is a plain loop over in-memory float tensors (no DataLoader: that would
  only slow it down), on one thread, with the same task streams (same permutations, classes
  and subsets; the example order within an epoch differs), the same Xavier-uniform/zero-bias
  init, hyper-parameters and `drop_last` batching. ER follows mammoth's `er.py`: replay
  `mb` examples drawn without replacement when the buffer is not empty, concatenated with the
  batch, one forward, mean cross-entropy, one step, then mammoth's `reservoir()` and
  `Buffer.add_data` insertion loop, example by example in Python. Online EWC adds
  (λ/2)·Σ F (θ−θ*)² to the loss (from the second task on, as mammoth) and computes the
  empirical Fisher at task end as the mean of per-example squared gradients with
  `torch.func.vmap(grad)` over chunks of 128: the fair, vectorised per-example Fisher
  (mammoth's own loop over single examples would be far slower).
- In sequax the EWC penalty is part of the differentiated loss and fused into the compiled
  step; the reservoir insertion is one vectorised scatter inside the step; the Fisher is a
  compiled `vmap(grad)` scan over the task in chunks of 128.
"""


def header(info, seconds: float, suite: str, program: str = "sequax.launch.bench") -> list[str]:
    """The lines under a section's title: the command (`python -m PROGRAM` and this process's
    flags), date, machine and software, and whether it was a quick run."""
    command = " ".join([f"python -m {program}", *sys.argv[1:]])
    lines = [
        "Command:",
        "",
        f"    {command}",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {suite} suite time "
        f"{seconds / 60:.1f} min.",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']:.1f} GiB RAM; "
        f"load average at start {info['load'][0]:.2f}.",
        f"- Software: Python {info['python']}, jax {info['jax']} (jaxlib {info['jaxlib']}), torch "
        f"{info['torch']}.",
    ]
    if _TASKS.value or _TRAIN_PER_TASK.value:
        lines.append(
            f"- **Quick run** (tasks={_TASKS.value or 'protocol'}, train_per_task="
            f"{_TRAIN_PER_TASK.value or 'all'}): not the protocol; the targets are indicative only."
        )
    return lines


def report(results, workloads, methods, info, seconds) -> str:
    target_rows = targets(results, workloads, methods)
    lines = [
        "## sequax against a plain PyTorch loop",
        "",
        "Workloads of `../shared/PROTOCOLS.md` §E, each cell in its own process.",
        *header(info, seconds, "compare"),
        "- Threads: torch `set_num_threads(1)`; sequax "
        + (
            f"pinned to {_SEQUAX_CORES.value} core(s) with `sched_setaffinity`"
            if _SEQUAX_CORES.value
            else f"on all {info['cores']} cores, XLA's default threading"
        )
        + f" (XLA_FLAGS: {info['xla_flags']}).",
        "- Workloads: PMNIST-10 = Permuted MNIST, 10 tasks × 60,000, MLP 784-256-256-10, SGD lr "
        "0.1, batch 128; SMNIST-5 = Split MNIST class-IL, 5 tasks × 2 classes, MLP 784-100-100-10, "
        "SGD lr 0.03, batch 10; 1 epoch per task. ER: reservoir of 500, replay batch = training "
        "batch. EWC: online, γ 1, λ 1.4 (PMNIST) / 180 (SMNIST) with our ½ (DER's e_lambda 0.7 / "
        "90), empirical Fisher over the whole task.",
    ]
    lines += [
        "",
        "### Results",
        "",
        tables(results, workloads, methods),
        "",
        "### Targets",
        "",
        "| target | measured | result |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | {measured} | {verdict} |" for name, measured, verdict in target_rows]
    lines += ["", HOW_TO_READ]
    return "\n".join(lines)


def documents(output: str, update_docs: bool, root: Path | None = None) -> list[Path]:
    """The documents a suite's section goes into: `output` (none if empty) and, with
    `update_docs`, docs/benchmarks.md of the repository at `root` (default: the one this
    package is installed from; one line and exit 2 when there is none). Called before the
    suite runs, so a missing docs folder stops the command before an hour of cells."""
    paths = [Path(output)] if output else []
    return paths + ([repository_docs(root) / "benchmarks.md"] if update_docs else [])


def publish(name: str, text: str, paths: list[Path]) -> None:
    """Section `name` of every document in `paths` (`documents()`) becomes `text`."""
    for path in paths:
        write_section(path, name, text)
        print(f"\nwrote the {name} section of {path}")


def write_section(path: str | Path, name: str, text: str) -> None:
    """Replaces the text between `<!-- name -->` and `<!-- /name -->` in `path` (appends if
    absent)."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    file = Path(path)
    old = file.read_text() if file.exists() else "# Benchmarks\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(new)


def timed(label: str, fn):
    """Runs one benchmark cell, `fn() -> result dict or None`, printing its label, then its
    throughput, accuracy and wall time (those it reports) and the seconds it took, or "failed"."""
    t0 = time.perf_counter()
    print(f"{label} ...", end=" ", flush=True)
    out = fn()
    if out and "samples_per_s" in out:
        acc = f", acc {out['acc']:.2f}%" if "acc" in out else ""
        wall = f", wall {out['wall']:.1f}s" if "wall" in out else ""
        print(
            f"{out['samples_per_s']:,.0f} samples/s{acc}{wall} ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    else:
        print("failed", flush=True)
    return out


def compare_suite(workloads, methods, info) -> str:
    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for w in workloads:
            for m in methods:
                for f in FRAMEWORKS:
                    result = timed(
                        f"{WORKLOADS[w]['title']} {m} {f}",
                        functools.partial(run_child, w, m, f, folder),
                    )
                    if result is not None:
                        results[(w, m, f)] = result
    return report(results, workloads, methods, info, time.perf_counter() - start)


def main(argv):
    logging.set_verbosity(
        logging.WARNING
    )  # orbax's per-checkpoint INFO lines would drown the output
    reject_stray(argv)
    if _SINGLE.value:
        run_single(_SINGLE.value, _JSON_OUT.value)
        return
    workloads = [w for w in _WORKLOADS.value.split(",") if w]
    methods = [m for m in _METHODS.value.split(",") if m]
    unknown = sorted(set(workloads) - set(WORKLOADS)) + sorted(set(methods) - set(METHODS))
    if unknown:
        raise app.UsageError(
            f"unknown workload/method {unknown}; known: {list(WORKLOADS)}, {list(METHODS)}"
        )
    suites = [s for s in _SUITES.value.split(",") if s]
    if set(suites) - {"time", "compare"}:
        raise app.UsageError(f"--suites={_SUITES.value}: use time, compare or both")
    paths = documents(_OUTPUT.value, flags.FLAGS.update_docs)
    info = machine()
    if "time" in suites:
        titles = {w: spec["title"] for w, spec in WORKLOADS.items()}
        results, seconds = time_suite(run_child, timed, titles)
        text = time_report(results, titles, header(info, seconds, "time"))
        print("\n" + text.rstrip())
        publish("time", text, paths)
    if "compare" in suites:
        text = compare_suite(workloads, methods, info)
        print("\n" + text.split("### How to read this")[0].rstrip())
        publish("compare", text, paths)


if __name__ == "__main__":
    app.run(main)
