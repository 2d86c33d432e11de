"""The open core (issue 15): components named by import path, the method switch on the
command line, one-line errors for a bad path or a non-method, the user's own writer sink,
and `sequax.train` with objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optax
import pytest

import sequax
from sequax import algorithms, data
from sequax.engine import loop
from sequax.engine.build import ConfigError
from sequax.engine.schema import base_config

REPO = Path(__file__).resolve().parents[2]


def train_cli(workdir, *overrides, config="configs/smnist_naive.py:local"):
    """`python -m sequax.launch.train` on a small packaged-MNIST run; (code, stdout, stderr)."""
    cmd = [sys.executable, "-m", "sequax.launch.train", f"--config={config}",
           f"--workdir={workdir}", "--config.data.source=mnist_packaged",
           "--config.data.train_per_task=300", "--config.data.test_per_task=100",
           "--config.checkpoint.enabled=False", *overrides]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_algorithm_name_on_the_command_line_brings_its_hyperparameters(tmp_path):
    code, out, err = train_cli(
        tmp_path, "--config.algorithm.name=er", "--config.algorithm.capacity=500"
    )
    assert code == 0, err[-2000:]
    saved = json.loads((tmp_path / "config.json").read_text())["algorithm"]
    assert saved == {"name": "er", "capacity": 500, "replay_batch": 10,  # ER's defaults
                     "buffer_policy": "reservoir", "buffer_classes": 0}  # fmt: skip
    assert "sequax: er on split_mnist" in out


def test_a_method_of_ones_own_by_import_path_from_the_command_line(tmp_path):
    code, out, err = train_cli(
        tmp_path,
        "--config.algorithm.name=examples.custom_method:WeightedReplay",
        "--config.algorithm.weight=2",
        "--config.algorithm.capacity=100",
    )
    assert code == 0, err[-2000:]
    saved = json.loads((tmp_path / "config.json").read_text())["algorithm"]
    assert saved["weight"] == 2.0 and saved["capacity"] == 100
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["class_il"]["acc"] > 0.3  # naive fine-tuning on this stream: about 0.19


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("no_such_module:Thing", "cannot import 'no_such_module'"),
        ("examples.custom_method:Nothing", "has no attribute 'Nothing'"),
        ("collections:OrderedDict", "lacks wrap_model"),
    ],
)
def test_a_bad_method_path_is_one_line_before_compiling(tmp_path, name, fragment):
    code, _, err = train_cli(tmp_path, f"--config.algorithm.name={name}")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "config.json").exists()  # nothing written for a refused run


def test_an_unknown_hyperparameter_of_the_switched_method_is_one_line(tmp_path):
    code, _, err = train_cli(
        tmp_path, "--config.algorithm.name=er", "--config.algorithm.capacty=500"
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "capacty" in err and "capacity" in err


class Recorder:
    """A writer sink of the user's own: keeps every record's kind."""

    kinds: list[str] = []

    def __init__(self, workdir, config):
        Recorder.kinds = []

    def write(self, record):
        Recorder.kinds.append(record["kind"])

    def close(self):
        Recorder.kinds.append("closed")


def small_config():
    config = base_config()
    config.data.update(source="mnist_packaged", num_tasks=2, train_per_task=200, test_per_task=100)
    config.data.options = {"classes_per_task": 2}
    config.checkpoint.enabled = False
    return config


def test_a_writer_sink_of_ones_own_by_import_path(tmp_path):
    config = small_config()
    config.writers.sinks = (f"{__name__}:Recorder",)
    loop.run(config, tmp_path, verbose=False)
    assert Recorder.kinds[0] == "start" and Recorder.kinds[-2:] == ["summary", "closed"]
    assert Recorder.kinds.count("eval") == 3  # the untrained model, then after each task


def test_model_and_scenario_by_import_path(tmp_path):
    config = small_config()
    config.model = {"name": "examples.custom_model:SmallCNN"}
    result = loop.run(config, tmp_path, verbose=False)
    assert "Conv_0" in result.state.params  # the user's flax module was trained
    config.data.scenario = "no_such_module:split"
    with pytest.raises(ConfigError, match="config.data.scenario='no_such_module:split'"):
        loop.run(config, tmp_path / "other", verbose=False)


def test_train_with_objects_equals_the_config_run(tmp_path):
    """`sequax.train(stream, model, algorithm, optimizer)` with objects trains exactly what the
    config naming the same parts trains."""
    config = small_config()
    config.algorithm = {"name": "er", "capacity": 50, "replay_batch": 5}
    config.optimizer.lr = 0.1
    from_config = loop.run(config, tmp_path / "config", verbose=False)
    source = data.load_source("mnist_packaged")
    stream = data.subsample(
        data.make_scenario("split", source, num_tasks=2, seed=0, classes_per_task=2),
        200, 100, seed=0,
    )  # fmt: skip
    from_objects = sequax.train(
        stream, "mlp", algorithms.ER(capacity=50, replay_batch=5), optax.sgd(0.1),
        workdir=tmp_path / "objects", verbose=False, checkpoint={"enabled": False},
    )  # fmt: skip
    assert (from_objects.class_il == from_config.class_il).all()
    saved = json.loads((tmp_path / "objects" / "config.json").read_text())
    assert saved["algorithm"] == {"name": "sequax.algorithms.er:ER", "capacity": 50,
                                  "replay_batch": 5, "buffer_policy": "reservoir",
                                  "buffer_classes": 0}  # fmt: skip
    assert saved["optimizer"]["name"].startswith("given:")


def test_an_object_that_is_no_method_is_refused_in_one_line(tmp_path):
    stream = data.make_scenario("split", data.load_source("mnist_packaged"), num_tasks=5)
    with pytest.raises(ConfigError, match="lacks .*subclass sequax.Algorithm"):
        sequax.train(stream, "mlp", object(), workdir=tmp_path, verbose=False)


def broken(*args, **kwargs):
    """A factory of one's own that fails (its module imports; calling it raises)."""
    raise RuntimeError("no data on this machine")


def text(*args, **kwargs):
    """A factory of one's own that returns the wrong kind of object."""
    return "not a component"


@pytest.mark.parametrize(
    "key, function, fragment",
    [
        ("data.source", "broken", "config.data.source='{path}' failed when called with no "
         "arguments (RuntimeError: no data on this machine)"),
        ("data.source", "text", "config.data.source='{path}' returned a str, not an ImageSource"),
        ("data.scenario", "broken", "config.data.scenario='{path}' failed when called with "
         "(source, num_tasks=, seed=, **config.data.options) (RuntimeError: no data on this"),
        ("data.scenario", "text", "config.data.scenario='{path}' returned a str, not a Scenario"),
        ("model.name", "broken", "config.model.name='{path}' failed when called with "
         "(num_classes, **config.model) (RuntimeError"),
        ("writers.sinks", "broken", "config.writers.sinks: '{path}' failed when called with "
         "(workdir, config) (RuntimeError: no data on this machine); it must take those two"),
    ],
)  # fmt: skip
def test_a_factory_of_ones_own_that_fails_or_returns_the_wrong_kind_is_one_line(
    tmp_path, key, function, fragment
):
    config, path = small_config(), f"{__name__}:{function}"
    section, name = key.split(".")
    if key == "model.name":
        config.model = {"name": path}  # the MLP's keys are not the factory's
    else:
        config[section][name] = (path,) if key == "writers.sinks" else path
    with pytest.raises(ConfigError) as caught:
        loop.run(config, tmp_path / "run", verbose=False)
    message = str(caught.value)
    assert fragment.format(path=path) in message and "\n" not in message, message
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (dict(stream="split"), "stream='split' is not a task stream; give one"),
        (dict(algorithm=algorithms.ER), "algorithm=sequax.algorithms.er.ER is a class; give an "
         "instance, e.g. ER(...)"),
        (dict(batch_size="10"), "batch_size='10' must be an integer"),
        (dict(workdir=5), "workdir=5 must be a folder's path"),
        (dict(sweep={"lr": "0.1"}), "sweep['lr']='0.1' must list numbers"),
        (dict(mesh=2), "mesh=2 must be a dict of config.mesh's keys"),
    ],
)  # fmt: skip
def test_bad_arguments_to_train_are_one_line_before_anything_is_read(tmp_path, arguments, fragment):
    given = {"stream": {"source": "mnist_packaged"}, "workdir": tmp_path / "run", **arguments}
    with pytest.raises(ConfigError) as caught:
        sequax.train(given.pop("stream"), **given, verbose=False)
    assert fragment in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["agem", "hat", "lamaml"])
def test_the_methods_optimizer_hook_wraps_the_optimizer_once(name):
    """The run's optimizer state is exactly `algorithm.optimizer(tx).init(params)`: the
    method's surgery, scaling or clamp chained once (twice would scale HAT's and La-MAML's
    steps twice)."""
    import jax

    from sequax.engine.experiment import from_config
    from sequax.engine.programs import make_programs

    config = small_config()
    config.algorithm = {"name": name, **({"num_tasks": 2} if name in ("agem", "hat") else {})}
    if name in ("agem", "lamaml"):
        config.algorithm.update(capacity=50, replay_batch=10)
    experiment = from_config(config)
    batch = {"x": jax.numpy.zeros((10, 28, 28, 1)), "y": jax.numpy.zeros((10,), int),
             "task": jax.numpy.zeros((10,), int)}  # fmt: skip
    programs = make_programs(experiment, batch, per_run_images=False)
    params, _ = experiment.model.init(jax.random.PRNGKey(0), batch["x"])
    once = experiment.algorithm.optimizer(experiment.optimizer({})).init(params)
    assert jax.tree.structure(programs.shapes.opt_state) == jax.tree.structure(
        jax.tree.map(lambda a: a[None], once)
    )


def test_the_loop_a_newcomer_reads_first_fits_on_150_lines():
    import inspect

    assert len(inspect.getsource(loop.run).splitlines()) <= 150


def test_the_engine_dispatches_no_hook_by_introspection():
    """Every hook of the table is called as a method: no hasattr/getattr/inspect on a hook."""
    from sequax.core.protocol import HOOKS

    engine = REPO / "engine"
    for path in engine.rglob("*.py"):
        text = path.read_text()
        for hook in HOOKS:
            for probe in (f'hasattr(algorithm, "{hook}")', f'getattr(algorithm, "{hook}"',
                          f'"{hook}" in inspect'):  # fmt: skip
                assert probe not in text, (path, probe)


def halved_every_10_steps(lr, steps_per_epoch, epochs_per_task):
    """A schedule of the user's own: config.optimizer.schedule names it by import path."""
    return optax.exponential_decay(lr, transition_steps=10, decay_rate=0.5, staircase=True)


def test_a_vmapped_adam_lr_sweep_with_a_schedule_of_ones_own_equals_the_separate_runs(tmp_path):
    """Adam with a user's schedule (by import path): two learning rates swept in one program
    give each separate run's accuracy matrix."""
    config = small_config()
    config.algorithm = {"name": "er", "capacity": 50, "replay_batch": 5}
    config.optimizer.update(name="adam", lr=1e-3, schedule=f"{__name__}:halved_every_10_steps")
    config.sweep.lr = (1e-3, 3e-3)
    swept = loop.run(config, tmp_path / "swept", verbose=False)
    assert swept.class_il.shape == (2, 2, 2)
    for r, lr in enumerate((1e-3, 3e-3)):
        single = small_config()
        single.algorithm = config.algorithm
        single.optimizer.update(name="adam", lr=lr, schedule=config.optimizer.schedule)
        alone = loop.run(single, tmp_path / f"alone{r}", verbose=False)
        np.testing.assert_allclose(swept.class_il[r], alone.class_il, atol=1e-6)
