"""Torch backbones trained through the bridge against sequax's built-in flax networks.

The issue's "done when" (issue 5): a torch ResNet-18 and a torch CNN with BatchNorm train
under EWC and DER++ through sequax with accuracy comparable to the built-in flax network on
the same run budget. Every cell is one `engine.loop.run` of the same config (data, tasks,
steps, seeds, hyper-parameters) in which only `config.model` differs:

  flax resnet18    `engine.models.resnet18(nf)`: the reduced ResNet-18 of GEM/DER, in flax
  flax resnet18_from_torch  the same flax network starting, for each seed, from the torch
                   ResNet-18's initial weights of that seed (`init_from="torch"`,
                   `engine.torch_bridge.to_flax`): with the draws equal, what is left
                   between it and the torch ResNet-18 is the framework that trains them
  torch resnet18   `engine.torch_bridge.zoo.resnet18_reduced(nf)`: the same network in torch
  torch cnn        `engine.torch_bridge.zoo.small_cnn`: conv-BN-ReLU-pool x2, linear
  flax mlp         `engine.models.mlp`: 784-100-100-10, the DER MNIST network. sequax has no
                   flax counterpart of the small CNN, so the torch CNN is read against the
                   flax ResNet-18 (a conv net with BatchNorm) and the flax MLP (the protocol's
                   own network on this data)

    python -m evidence.torch_compare     # from the repository root; ~18 min on 2 CPU cores
    python -m evidence.torch_compare --networks=torch_cnn,flax_mlp --algorithms=derpp --markdown=
    python -m evidence.torch_compare --update_docs   # + the repository's docs/torch_bridge.md

The run budget (flags): Split MNIST (or --source=fashion_mnist), 5 tasks of 2 classes,
`--train_examples` training and `--test_examples` test examples per task, one epoch, batch
10, `--num_seeds` seeds vmapped into one program per cell (the torch modules re-draw their
initial weights from each seed, `reinit=True`, as the flax ones do). Methods, with the DER
paper's Split MNIST settings (configs/smnist_ewc.py, configs/smnist_derpp.py; not tuned for
these networks): online EWC (γ 1, likelihood-weighted empirical Fisher) at `--ewc_lam` 1,
not the MLP's 180: plain SGD on the penalty is stable only while lr · λ · F < 2 for every
parameter, and the ResNet-18's Fisher reaches F = 39 (its stem conv, after one task of 500
examples at nf=8), so λ 180 and even λ 10 diverged (NaN/inf loss in task 2 or 3) where λ 1
trains (lr · λ · F ≈ 0.4, room for the Fisher summed over 5 tasks); DER++ (buffer
`--capacity`, replay batch 10, α 1, β 0.5); SGD at `--lr` 0.01, not the DER MLP's
0.03: at 0.03 the small CNN's first SGD steps move its logits by ~10 (its classifier reads
1,568 features, the MLP's 100), and DER++'s logit-matching MSE (α 1) keeps it there: on
200 examples per task its loss went 2.9 → 1,010 by step 3 and it stayed at chance, where
at 0.01 it reached 96 % (the ResNets learn at either rate). The table is written into
`--markdown` (runs/torch_compare/torch_bridge.md by default) between `<!-- compare -->`
markers, with the command, date, machine and each cell's wall time (compile included);
`--update_docs` also writes it into the repository's docs/torch_bridge.md.
"""

from __future__ import annotations

import datetime
import sys
import tempfile
import time
from pathlib import Path

import ml_collections
import numpy as np
from absl import app, flags, logging

from sequax.configs import common
from sequax.launch.common import define_update_docs, machine, repository_docs

_NETWORKS = flags.DEFINE_string(
    "networks",
    "flax_mlp,torch_cnn,flax_resnet18,torch_resnet18",
    "Comma-separated networks (see the module docstring).",
)
# Not --methods, --tasks, --output: `sequax.launch.bench`'s flags (imported for `write_section`),
# and absl's flags are one namespace per process (a test process imports both modules).
_METHODS = flags.DEFINE_string("algorithms", "derpp,ewc", "Comma-separated methods: ewc, derpp.")
_SOURCE = flags.DEFINE_string(
    "source", "mnist", "Data source: mnist, fashion_mnist (../shared/data) or mnist_packaged."
)
_TASKS = flags.DEFINE_integer("num_tasks", 5, "Split tasks (2 classes each).")
_TRAIN_PER_TASK = flags.DEFINE_integer("train_examples", 1000, "Training examples per task.")
_TEST_PER_TASK = flags.DEFINE_integer("test_examples", 300, "Test examples per task.")
_SEEDS = flags.DEFINE_integer("num_seeds", 2, "Seeds per cell, vmapped into one program.")
_NF = flags.DEFINE_integer(
    "nf", 8, "Width of both ResNet-18s' first stage (20: the reduced ResNet-18 of GEM)."
)
_CAPACITY = flags.DEFINE_integer("capacity", 200, "DER++ buffer size.")
_LAM = flags.DEFINE_float(
    "ewc_lam", 1.0, "Online EWC's λ (see the module docstring for why not 180)."
)
_LR = flags.DEFINE_float(
    "lr", 0.01, "SGD learning rate of every cell (see the module docstring for why not 0.03)."
)
_OUTPUT = flags.DEFINE_string(
    "markdown",
    "runs/torch_compare/torch_bridge.md",
    "Markdown file for the table; empty = print only.",
)
define_update_docs()
REPO_ROOT = Path(__file__).resolve().parents[1]

NETWORKS = ("flax_resnet18", "torch_resnet18", "torch_cnn", "flax_mlp", "flax_resnet18_from_torch")
METHODS = {
    # The DER paper's Split MNIST settings (configs/smnist_ewc.py, configs/smnist_derpp.py).
    "ewc": dict(name="ewc", gamma=1.0, online=True, likelihood_weighted=True),  # λ: --ewc_lam
    "derpp": dict(name="derpp", replay_batch=10, alpha=1.0, beta=0.5),
}
TITLES = {"ewc": "online EWC", "derpp": "DER++"}


def model_config(network: str, nf: int, num_classes: int = 10) -> ml_collections.ConfigDict:
    """`config.model` of one network; both ResNets at width `nf`, one input channel."""

    def torch_model(factory, **kwargs):
        return ml_collections.ConfigDict(
            dict(
                name="torch",
                factory=f"sequax.engine.torch_bridge.zoo:{factory}",
                kwargs=ml_collections.ConfigDict(
                    dict(num_classes=num_classes, in_channels=1, **kwargs)
                ),
                classifier="",
                reinit=True,  # each seed its own initial weights, as the flax networks
                input_layout="NHWC",
                input_shape=(28, 28, 1),
                seed=0,
            )
        )

    if network == "flax_resnet18":
        return ml_collections.ConfigDict(dict(name="resnet18", nf=nf))
    if network == "flax_resnet18_from_torch":
        return ml_collections.ConfigDict(dict(name="resnet18", nf=nf, init_from="torch"))
    if network == "torch_resnet18":
        return torch_model("resnet18_reduced", nf=nf)
    if network == "torch_cnn":
        return torch_model("small_cnn")
    if network == "flax_mlp":
        return ml_collections.ConfigDict(
            dict(name="mlp", widths=(100, 100), dropout=0.0, init="xavier")
        )
    raise ValueError(f"unknown network {network!r}; known: {', '.join(NETWORKS)}")


def cell_config(
    network: str,
    method: str,
    *,
    source: str,
    tasks: int,
    train_per_task: int,
    test_per_task: int,
    seeds: int,
    nf: int,
    capacity: int,
    lr: float = 0.01,
    ewc_lam: float = 1.0,
) -> ml_collections.ConfigDict:
    """The run of one cell: the same budget and hyper-parameters for every network."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    algorithm = dict(METHODS[method])
    if method == "derpp":
        algorithm["capacity"] = capacity
    if method == "ewc":
        algorithm["lam"] = ewc_lam
    config = common.der_config("split", algorithm.pop("name"), lr=lr, **algorithm)
    config.data.source = source
    config.data.num_tasks = tasks
    config.data.train_per_task = train_per_task
    config.data.test_per_task = test_per_task
    config.model = model_config(network, nf)
    config.runs = seeds
    return config


def run_cell(config, workdir: str) -> dict:
    """One cell: per-seed final class-IL and task-IL accuracies (%) and the wall time."""
    from sequax.engine import loop  # here: flag parsing and --help stay fast

    t0 = time.perf_counter()
    result = loop.run(config, workdir, verbose=False)
    wall = time.perf_counter() - t0
    class_il, task_il = np.asarray(result.class_il), np.asarray(result.task_il)
    if class_il.ndim == 2:  # one run: add the run axis
        class_il, task_il = class_il[None], task_il[None]
    return dict(
        class_il=100 * class_il[:, -1].mean(-1),
        task_il=100 * task_il[:, -1].mean(-1),
        wall_s=wall,
        train_samples_per_s=float(result.timings["train_samples_per_s"]),
    )


def compare(networks, methods, *, say=print, on_cell=None, **budget) -> dict[tuple[str, str], dict]:
    """Runs every (method, network) cell; {(method, network): run_cell's result}.
    `on_cell(results)`, when given, is called after each cell (the report so far)."""
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in methods:
            for network in networks:
                say(f"{TITLES[method]} {network} ...", end=" ", flush=True)
                cell = run_cell(
                    cell_config(network, method, **budget), f"{folder}/{method}_{network}"
                )
                results[(method, network)] = cell
                say(
                    f"class-IL {cell['class_il'].mean():.2f}%, task-IL "
                    f"{cell['task_il'].mean():.2f}%, {cell['wall_s']:.0f}s",
                    flush=True,
                )
                if on_cell:
                    on_cell(results)
    return results


def _mean_std(values: np.ndarray) -> str:
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):.2f} ± {std:.2f}"


def format_table(results: dict, budget: dict, *, command: str, info: dict, total_s: float) -> str:
    """The markdown section: what ran, on what, and one row per (method, network)."""
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        (
            f"Generated by `{command}` on {date}; {info['cpu']}, {info['cores']} cores, jax "
            f"{info['jax']}, torch {info['torch']}; load average {info['load'][0]:.1f} at the end "
            f"(a shared machine: wall times are rough); {total_s / 60:.1f} min in all."
        ),
        "",
        (
            f"Split {budget['source']} (class-IL, {budget['tasks']} tasks of 2 classes), "
            f"{budget['train_per_task']} training and {budget['test_per_task']} test examples per "
            f"task, 1 epoch, batch 10, SGD lr {budget['lr']}, {budget['seeds']} seeds vmapped in "
            f"one program per cell; ResNet-18 width nf={budget['nf']}; online EWC λ "
            f"{budget['ewc_lam']}, γ 1; DER++ buffer {budget['capacity']}, α 1, β 0.5. ACC: final "
            "average accuracy (%), mean ± std over the seeds. Wall: the whole cell (data, compile, "
            "training, end of task, evaluation) for all its seeds."
        ),
        "",
        "| method | network | framework | class-IL ACC | task-IL ACC | train samples/s | wall (s) "
        "|",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (method, network), cell in results.items():
        framework, name = network.split("_", 1)
        lines.append(
            f"| {TITLES[method]} | {name} | {framework} | {_mean_std(cell['class_il'])} "
            f"| {_mean_std(cell['task_il'])} | {cell['train_samples_per_s']:,.0f} "
            f"| {cell['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    from sequax.launch.bench import write_section

    logging.set_verbosity(
        logging.WARNING
    )  # orbax's per-checkpoint INFO lines would drown the output
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    networks = [n for n in _NETWORKS.value.split(",") if n]
    methods = [m for m in _METHODS.value.split(",") if m]
    for name, values, known in (
        ("networks", networks, NETWORKS),
        ("algorithms", methods, tuple(METHODS)),
    ):
        unknown = sorted(set(values) - set(known))
        if unknown or not values:
            raise app.UsageError(
                f"--{name}: unknown {unknown or 'none given'}; known: {', '.join(known)}"
            )
    budget = dict(
        source=_SOURCE.value,
        tasks=_TASKS.value,
        train_per_task=_TRAIN_PER_TASK.value,
        test_per_task=_TEST_PER_TASK.value,
        seeds=_SEEDS.value,
        nf=_NF.value,
        capacity=_CAPACITY.value,
        lr=_LR.value,
        ewc_lam=_LAM.value,
    )
    paths = [Path(_OUTPUT.value)] if _OUTPUT.value else []
    if flags.FLAGS.update_docs:  # checked before the first cell
        paths.append(repository_docs(REPO_ROOT) / "torch_bridge.md")
    start = time.perf_counter()
    command = ("python -m evidence.torch_compare " + " ".join(sys.argv[1:])).strip()
    total = len(networks) * len(methods)

    def report(results):  # after every cell, so a run cut short still leaves its cells
        text = format_table(
            results, budget, command=command, info=machine(), total_s=time.perf_counter() - start
        )
        if len(results) < total:
            text += (
                f"\n{len(results)} of {total} cells so far "
                "(the run was still going or was cut short).\n"
            )
        for path in paths:
            write_section(path, "compare", text)
        return text

    print(report(compare(networks, methods, on_cell=report, **budget)))
    for path in paths:
        print(f"wrote the compare section of {path}")


if __name__ == "__main__":
    app.run(main)
