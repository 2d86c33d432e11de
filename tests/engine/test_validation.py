"""The bad-input catalogue of docs/errors.md: every bad config gets one line naming the key and
the fix, before any data is read (`check_config`) or anything compiles (`check_combination`).

Each case builds a config from `base_config()` / `der_config()` and expects a `ConfigError` whose
message is a single line holding the offending key and the words of its fix. Two cases run the
command line (`python -m sequax.launch.train`) for the exit status and stderr a user sees.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from sequax.configs import common
from sequax.engine import loop, validate
from sequax.engine.build import ConfigError, build_algorithm, build_scenario


def packaged(algorithm: str = "naive", scenario: str = "split", **algorithm_kwargs):
    """A DER-protocol config on the packaged MNIST subset (8,000 training images, no data root)."""
    config = common.der_config(scenario, algorithm, 0.1, **algorithm_kwargs)
    config.data.source = "mnist_packaged"
    return config


def one_line_error(check, config, *fragments: str) -> str:
    with pytest.raises(ConfigError) as caught:
        check(config)
    message = str(caught.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def combination_error(config, *fragments: str) -> str:
    """The `check_combination` message of `config` (its stream and method built first)."""
    validate.check_config(config)  # the config itself is fine: only the combination is not
    scenario, algorithm = build_scenario(config.data), build_algorithm(config.algorithm)
    return one_line_error(
        lambda c: validate.check_combination(c, scenario, algorithm), config, *fragments
    )


def test_every_shipped_config_passes():
    """The checks refuse nothing the repository's own configs (full and :local) set."""
    import importlib

    names = sorted(
        p.stem for p in (REPO_ROOT / "configs").glob("*.py") if p.stem not in ("__init__", "common")
    )
    assert len(names) > 20
    for name in names:
        module = importlib.import_module(f"sequax.configs.{name}")
        for arg in (None, "local"):
            validate.check_config(module.get_config(arg))


# ---------------------------------------------------------------- unknown keys ----------


def test_unknown_key_in_a_fixed_section_suggests_the_nearest():
    config = packaged()
    config.training.epoch = 3  # a config file adding a key base_config() does not have
    one_line_error(
        validate.check_config,
        config,
        "config.training.epoch",
        "did you mean config.training.epochs?",
        "base_config",
    )


def test_unknown_top_level_key():
    config = packaged()
    config.seeds = 3
    one_line_error(validate.check_config, config, "config.seeds", "did you mean config.seed?")


def test_unknown_hyperparameter_names_the_method_and_suggests():
    config = packaged("ewc", lam=1.0)
    config.algorithm.lamda = 1.0
    one_line_error(
        validate.check_config,
        config,
        "config.algorithm.lamda",
        "'ewc'",
        "did you mean config.algorithm.lam?",
    )


def test_unknown_method_suggests_the_nearest():
    one_line_error(
        validate.check_config, packaged("derpp_"), "config.algorithm.name", "did you mean 'derpp'?"
    )


def test_combined_method_keys_live_under_each_part():
    config = packaged("er+ewc")
    config.algorithm.er = dict(capacity=100, replay_batch=10)
    config.algorithm.ewc = dict(lamb=1.0)
    one_line_error(
        validate.check_config,
        config,
        "config.algorithm.ewc.lamb",
        "did you mean config.algorithm.ewc.lam?",
    )


def test_unknown_model_and_scenario_arguments():
    config = packaged()
    config.model.widht = (10,)
    one_line_error(
        validate.check_config, config, "config.model.widht", "did you mean config.model.widths?"
    )
    config = packaged()
    config.model.width = 16  # the ViT's argument on the MLP: the message names whose it is
    one_line_error(
        validate.check_config, config, "config.model.width", "an argument of model 'vit'"
    )
    config = packaged()
    config.data.options.classes_per_tasks = 2
    one_line_error(
        validate.check_config,
        config,
        "config.data.options.classes_per_tasks",
        "did you mean config.data.options.classes_per_task?",
    )


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("data.source", "mnits", "did you mean 'mnist'?"),
        ("data.scenario", "permute", "did you mean 'permuted'?"),
        ("data.pipeline", "streaming", "did you mean 'stream'?"),
        ("writers.wandb_mode", "offlin", "did you mean 'offline'?"),  # even with W&B off
    ],
)
def test_unknown_choice_suggests_the_nearest(key, value, fragment):
    config = packaged()
    section, name = key.split(".")
    config[section][name] = value
    one_line_error(validate.check_config, config, f"config.{key}={value!r}", fragment, "known:")


# ---------------------------------------------------------------- wrong types -----------


def test_wrong_types():
    config = packaged()
    config.training = dict(
        batch_size="ten", epochs=1, steps_per_dispatch=250
    )  # a whole section replaced
    one_line_error(
        validate.check_config,
        config,
        "config.training.batch_size='ten'",
        "must be an integer",
        "e.g. 10",
    )
    config = packaged("ewc", lam="abc")  # free-form: typed by the method's dataclass defaults
    one_line_error(validate.check_config, config, "config.algorithm.lam='abc'", "must be a number")
    config = packaged("er", capacity=(100, 200))
    one_line_error(
        validate.check_config, config, "config.algorithm.capacity=(100, 200)", "must be an integer"
    )
    config = packaged("ewc", lam=True)  # a bool is not a number here, though Python calls it an int
    one_line_error(validate.check_config, config, "config.algorithm.lam=True", "must be a number")
    config = packaged("ewc", online="yes")
    one_line_error(
        validate.check_config, config, "config.algorithm.online='yes'", "must be True or False"
    )
    for widths in [(100, "x"), (100, 0), (100, 2.5)]:  # an element of the wrong type or size
        config = packaged()
        config.model.widths = widths
        one_line_error(validate.check_config, config, "config.model.widths=",
                       "must be a tuple of positive integers")  # fmt: skip


# ---------------------------------------------------------------- value ranges ----------


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("data.num_tasks", 0, "at least 1"),
        ("training.epochs", 0, "at least 1"),
        ("training.batch_size", 0, "at least 1"),
        ("runs", 0, "at least 1"),
        ("optimizer.lr", 0.0, "must be > 0"),
        ("optimizer.lr", -0.1, "must be > 0"),
        ("optimizer.momentum", -0.5, "must be >= 0"),
        ("training.glances", 0, "at least 1 (steps on each batch)"),
        ("seed", -1, "at least 0 (numpy's seeds cannot be negative)"),
        ("data.seed", -1, "at least 0 (numpy's seeds cannot be negative)"),
        ("mesh.fsdp_min_size", -1, "at least 0"),
        ("model.dropout", 1.5, "must be in [0, 1)"),
        ("model.dropout", -0.1, "must be in [0, 1)"),
    ],
)
def test_out_of_range_settings(key, value, fragment):
    config = packaged()
    if "." in key:
        section, name = key.split(".")
        config[section][name] = value
    else:
        config[key] = value
    one_line_error(validate.check_config, config, f"config.{key}={value!r}", fragment)


@pytest.mark.parametrize(
    "algorithm, kwargs, fragments",
    [
        ("ewc", dict(lam=-1.0), ("config.algorithm.lam=-1.0", ">= 0")),
        ("derpp", dict(alpha=-0.1), ("config.algorithm.alpha=-0.1", ">= 0")),
        ("derpp", dict(beta=-0.5), ("config.algorithm.beta=-0.5", ">= 0")),
        ("er", dict(capacity=0), ("config.algorithm.capacity=0", "at least 1")),
        (
            "er",
            dict(capacity=50, replay_batch=64),
            # the method's own rule (its __post_init__), run when the config is checked
            ("config.algorithm: ER replay_batch=64", "capacity=50"),
        ),
    ],
)
def test_out_of_range_hyperparameters(algorithm, kwargs, fragments):
    one_line_error(validate.check_config, packaged(algorithm, **kwargs), *fragments)


@pytest.mark.parametrize("name", ["resnet18", "torch"])
def test_a_model_renamed_on_the_command_line_names_the_keys_left_over(name):
    config = packaged()
    config.model.name = name  # --config.model.name=...: the MLP's widths, dropout, init stay
    one_line_error(
        validate.check_config,
        config,
        f"config.model.dropout is an argument of model 'mlp', not of '{name}'",
        "set the whole section in the config file",
    )


def test_a_workdir_with_a_tilde_or_variables_is_expanded(monkeypatch, tmp_path):
    from sequax.engine.integrity import workdir_path

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SEQUAX_TEST_SCRATCH", str(tmp_path / "scratch"))
    assert workdir_path("~/runs/a") == tmp_path / "runs" / "a"  # not ./~/runs/a
    assert workdir_path("$SEQUAX_TEST_SCRATCH/b") == tmp_path / "scratch" / "b"
    monkeypatch.delenv("SEQUAX_TEST_SCRATCH")
    with pytest.raises(ConfigError, match=r"\$SEQUAX_TEST_SCRATCH, which is not set; set it"):
        workdir_path("${SEQUAX_TEST_SCRATCH}/b")


def test_split_with_more_classes_than_the_source_has():
    config = packaged()
    config.data.num_tasks = 6  # x 2 classes per task = 12 > MNIST's 10
    one_line_error(
        validate.check_config,
        config,
        "config.data.num_tasks=6",
        "config.data.options.classes_per_task=2",
        "mnist_packaged has 10",
        "classes_per_task=1",
    )


# ---------------------------------------------------------------- method x stream -------


def test_icarl_on_a_domain_il_stream():
    config = packaged("icarl", "permuted", capacity=200, replay_batch=10)
    config.data.num_tasks = 2
    combination_error(
        config,
        "config.algorithm.name",
        "ICaRL",
        "class-incremental",
        "permuted_mnist_packaged",
        "config.data.scenario='split'",
    )


def test_buffer_larger_than_the_whole_stream():
    config = packaged("er", capacity=2000, replay_batch=10)
    config.data.train_per_task = 300  # 5 tasks x 300 = 1,500 examples
    combination_error(
        config,
        "config.algorithm.capacity=2000",
        "1500 training examples",
        "set config.algorithm.capacity <= 1500",
    )


def test_gem_task_count_must_match_the_stream():
    config = packaged("gem", capacity=200, num_tasks=5)
    config.data.num_tasks = 4
    combination_error(
        config, "config.algorithm.num_tasks=5", "4 tasks", "set config.algorithm.num_tasks=4"
    )


def test_head_width_and_feature_width_must_match():
    combination_error(
        packaged("derpp", num_classes=100),
        "config.algorithm.num_classes=100",
        "set config.algorithm.num_classes=10",
    )
    config = packaged("icarl", capacity=200, replay_batch=10, feature_dim=100)
    config.model.widths = (100, 32)
    combination_error(
        config, "config.algorithm.feature_dim=100", "set config.algorithm.feature_dim=32"
    )


def test_normalize_must_have_one_entry_per_channel_of_the_stream():
    config = packaged()
    config.data.normalize = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # RGB stats on MNIST
    combination_error(
        config,
        "config.data.normalize gives 3 channel(s) but mnist_packaged's images have 1",
        "((0.5,), (0.25,))",
    )


def test_combined_parts_are_checked_under_their_names():
    config = packaged("er+ewc")
    config.algorithm.er = dict(capacity=9000, replay_batch=10)
    config.algorithm.ewc = dict(lam=1.0)
    combination_error(config, "config.algorithm.er.capacity=9000")


def test_the_loop_refuses_before_touching_the_workdir_or_compiling(tmp_path):
    """A bad key leaves no workdir (an existing run's config.json is never overwritten); a bad
    combination stops before the first compile (no metrics beyond the header)."""
    config = packaged()
    config.training.epoch = 2
    with pytest.raises(ConfigError, match="config.training.epoch "):
        loop.run(config, tmp_path / "run", verbose=False)
    assert not (tmp_path / "run").exists()
    config = packaged("icarl", "rotated", capacity=200, replay_batch=10)
    config.data.num_tasks = 2
    with pytest.raises(ConfigError, match="class-incremental"):
        loop.run(config, tmp_path / "run2", verbose=False)
    assert not (tmp_path / "run2" / "summary.json").exists()


# ---------------------------------------------------------------- the command line ------


def train(*flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "sequax.launch.train", *flags],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line(run, *fragments: str) -> None:
    assert run.returncode == 2, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sequax: error: "), run.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_command_line_wrong_type_is_one_line(tmp_path):
    run = train(
        "--config=configs/quickstart.py:local",
        f"--workdir={tmp_path}",
        "--config.training.batch_size=ten",
    )
    assert_one_line(
        run, "--config.training.batch_size=ten", "invalid literal for int()", "type its default has"
    )


def test_command_line_unknown_key_and_bad_value(tmp_path):
    run = train(
        "--config=configs/quickstart.py:local",
        f"--workdir={tmp_path}",
        "--config.training.batchsize=10",
    )
    assert_one_line(run, "config.training.batchsize", "did you mean --config.training.batch_size?")
    run = train(
        "--config=configs/quickstart.py:local",
        f"--workdir={tmp_path}",
        "--config.training.epochs=0",
    )
    assert_one_line(run, "config.training.epochs=0", "at least 1")
    assert not tmp_path.joinpath("config.json").exists()
