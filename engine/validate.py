"""Checks a run's config before any data is read or anything compiles: keys, types, value
ranges, and the combinations of method and stream that cannot run together.

Two stages, both raising `ConfigError` with one line that names the key and the fix:

    check_config(config)                       # keys, types, ranges: before the data is loaded
    scenario, algorithm = build_scenario(config.data), build_algorithm(config.algorithm)
    check_combination(config, scenario, algorithm)   # method x stream: before any compile

The reference for keys and types is `sequax.engine.schema.base_config()` ("every key a run
reads"); the free-form sections are checked against what reads them: `config.algorithm`
against the method's dataclass fields, `config.model` against the backbone's keyword
arguments, `config.data.options` against the scenario builder's, `config.sweep` in
`sequax.engine.runs.make_grid`. Unknown keys get a "did you mean" from `difflib`. The whole
catalogue of bad inputs, messages and fixes is docs/errors.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any

from sequax import algorithms
from sequax.data import scenarios as scenario_lib
from sequax.data.sources import SOURCE_NAMES
from sequax.engine.build import MODELS, ConfigError, check_optimizer
from sequax.engine.writers import WANDB_MODES

# How config.json records a component given as an object (`sequax.train`): never loaded.
GIVEN = "given:"
# Sections whose keys depend on a choice (method, backbone, scenario) or are checked elsewhere.
FREE_FORM = ("algorithm", "model", "data.options", "optimizer.args", "sweep")
# Classes per source, known before the files are read (to check a Split stream early).
SOURCE_CLASSES = {
    "mnist": 10,
    "fashion_mnist": 10,
    "mnist_packaged": 10,
    "cifar10": 10,
    "cifar100": 100,
    "tiny_imagenet": 200,
}
CHOICES = {
    "data.source": (*SOURCE_NAMES, "torch"),  # "torch": the user's Datasets (data.factory)
    "data.scenario": tuple(scenario_lib.SCENARIO_BUILDERS),
    "data.pipeline": ("device", "stream"),
    "data.stream.order": ("device", "shuffle"),
    "writers.wandb_mode": WANDB_MODES,  # a typo is caught even while W&B is off
}
# (key, smallest value, what the key means): counts that must be at least 1 (or 0).
MINIMUMS = (
    ("seed", 0, "numpy's seeds cannot be negative"),
    ("runs", 1, "the number of seeds"),
    ("data.seed", 0, "numpy's seeds cannot be negative"),
    ("data.num_tasks", 1, "the number of tasks in the stream"),
    ("data.train_per_task", 0, "0 keeps every example"),
    ("data.test_per_task", 0, "0 keeps every example"),
    ("data.stream.workers", 0, "0 reads in a thread"),
    ("data.stream.prefetch", 1, "chunks kept on device"),
    ("training.batch_size", 1, "examples per step"),
    ("training.epochs", 1, "passes over each task"),
    ("training.steps_per_dispatch", 1, "steps per compiled chunk"),
    ("training.glances", 1, "steps on each batch"),
    ("eval.batch_size", 1, "test examples per evaluation batch"),
    ("eval.every_steps", 0, "0 evaluates at task ends only"),
    ("training.patience", 0, "0 trains every epoch"),
    ("data.validation", 0, "0 holds nothing out"),
    ("data.blurry.iterations", 1, "iterations per task of the linear decay"),
    ("mesh.fsdp_min_size", 0, "0 splits every parameter"),
)
# Algorithm fields: counts that must be >= 1, and loss or penalty weights that must be >= 0.
POSITIVE_FIELDS = (
    "capacity",
    "replay_batch",
    "num_classes",
    "num_tasks",
    "batch_size",
    "feature_dim",
    "fisher_batch",
    "importance_batch",
)
NONNEGATIVE_FIELDS = ("lam", "alpha", "beta", "c", "gamma", "epochs")
# Methods for class-incremental streams only: iCaRL's memory holds m = capacity / classes exemplars
# per class, herded when a class first appears, and its distillation targets replace the labels of
# every class seen before; on a domain-IL stream every class recurs in every task, so after task 0
# the labels are never used again and new tasks cannot be learned.
CLASS_IL_ONLY = (algorithms.ICaRL,)


def check_config(config) -> None:
    """Unknown keys, wrong types and out-of-range values of `config` (nothing is loaded)."""
    from sequax.engine.schema import base_config

    _check_section(config, base_config(), "config")
    for key, choices in CHOICES.items():
        value = _get(config, key)
        if _is_import_path(value):  # the user's own component, checked when it is loaded
            continue
        if value is not _MISSING and value not in choices:
            raise ConfigError(
                f"config.{key}={value!r} is unknown{_did_you_mean(value, choices)}; "
                f"known: {', '.join(map(repr, choices))}"
            )
    for key, least, meaning in MINIMUMS:
        value = _get(config, key)
        if value is not _MISSING and value < least:
            raise ConfigError(
                f"config.{key}={value!r} must be at least {least} ({meaning}); "
                f"set --config.{key}={least} or more"
            )
    epochs = _get(config, "training.epochs")  # a per-task schedule's length, unless given
    optimizer = _section(config, "optimizer")
    if not str(optimizer.get("name", "")).startswith(GIVEN):  # an object (sequax.train)
        check_optimizer(optimizer, epochs_per_task=epochs if isinstance(epochs, int) else None)
    _check_model(_section(config, "model"))
    _check_options(config)
    _check_algorithm(_section(config, "algorithm"))


def check_combination(config, scenario, algorithm) -> None:
    """The method against the stream it is given: class-IL-only methods, head widths, GEM's task
    count, buffers larger than the stream, iCaRL's feature width (all before any compile)."""
    _check_normalize(config, scenario)
    _check_stream_options(config, algorithm)
    stream = int(sum(scenario.train_sizes))
    for prefix, part in _parts(algorithm):
        method = type(part).__name__
        if isinstance(part, CLASS_IL_ONLY) and scenario.setting != "class":
            raise ConfigError(
                f"config.algorithm.name: {method} is for class-incremental streams only (its "
                "per-class exemplar memory and distillation stop it from learning once every class "
                f"recurs, as in {scenario.name}); use config.data.scenario='split', or a domain-IL "
                "method such as er, derpp or agem"
            )
        fields = {f.name for f in dataclasses.fields(part)}
        if "num_classes" in fields and part.num_classes != scenario.num_classes:
            raise ConfigError(
                f"{prefix}num_classes={part.num_classes} but {scenario.name} has "
                f"{scenario.num_classes} classes (the head's width); set "
                f"{prefix}num_classes={scenario.num_classes}"
            )
        uses_tasks = getattr(part, "memory", "task_end") != "reservoir"  # A-GEM-R ignores it
        if "num_tasks" in fields and uses_tasks and part.num_tasks != scenario.num_tasks:
            raise ConfigError(
                f"{prefix}num_tasks={part.num_tasks} but the stream has {scenario.num_tasks} tasks "
                f"(config.data.num_tasks); {method} keeps capacity // num_tasks examples per task, "
                f"so set {prefix}num_tasks={scenario.num_tasks}"
            )
        if "capacity" in fields and part.capacity > stream:
            raise ConfigError(
                f"{prefix}capacity={part.capacity} is larger than the whole stream ({stream} "
                f"training examples over {scenario.num_tasks} tasks), so the buffer can never "
                f"fill; set {prefix}capacity <= {stream} (or train on more examples: "
                "config.data.train_per_task)"
            )
        if isinstance(part, algorithms.ICaRL):
            width = _feature_width(_section(config, "model"))
            if width is not None and part.feature_dim != width:
                raise ConfigError(
                    f"{prefix}feature_dim={part.feature_dim} but the model's features have {width} "
                    f"entries; set {prefix}feature_dim={width}"
                )


def _check_normalize(config, scenario) -> None:
    """One (mean, std) per channel of the stream's images: known only once the source is read,
    and otherwise found inside the first trace (a traceback from within jit)."""
    normalize = _get(config, "data.normalize")
    source = getattr(scenario, "source", None)
    if not normalize or _MISSING is normalize or source is None:
        return
    channels = int(source.train_x.shape[-1])
    if len(normalize) == 2 and len(normalize[0]) != channels:
        example = ((0.5,) * channels, (0.25,) * channels)
        raise ConfigError(
            f"config.data.normalize gives {len(normalize[0])} channel(s) but {source.name}'s "
            f"images have {channels}; give one (mean, std) entry per channel, e.g. {example}, "
            "or () for none"
        )


# ---------------------------------------------------------------- helpers ----------------

_MISSING = object()


def _section(config, key: str) -> dict[str, Any]:
    value = _get(config, key)
    if value is _MISSING or value is None:
        return {}
    return dict(value.to_dict() if hasattr(value, "to_dict") else value)


def _get(config, dotted: str):
    value = config
    for part in dotted.split("."):
        try:
            value = value[part]
        except (KeyError, TypeError, AttributeError):
            return _MISSING
    return value


def _did_you_mean(key, known, path: str = "") -> str:
    close = difflib.get_close_matches(str(key), [str(k) for k in known], n=1, cutoff=0.6)
    if not close:
        return ""
    where = path.rsplit(".", 1)[0] + "." if "." in path else ""
    return f"; did you mean {where}{close[0]}?" if where else f"; did you mean {close[0]!r}?"


def _kind(default) -> tuple[tuple[type, ...], str]:
    """The accepted types and their name, from a default value."""
    if isinstance(default, bool):
        return (bool,), "True or False"
    if isinstance(default, int):
        return (int,), "an integer"
    if isinstance(default, float):
        return (int, float), "a number"
    if isinstance(default, str):
        return (str,), "a string"
    if isinstance(default, (tuple, list)):
        return (tuple, list), "a tuple"
    return (object,), "anything"


def _check_value(path: str, value, default) -> None:
    if (
        default is None or value is None and path == "config.data.root"
    ):  # root may be None (packaged data)
        return
    types, name = _kind(default)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        example = f" (e.g. {default!r})" if default != () else ""
        raise ConfigError(
            f"{path}={value!r} must be {name}{example}; fix the override or the config file"
        )


def _check_section(section, reference, path: str) -> None:
    for key in section.keys():
        dotted = f"{path}.{key}"
        value = section[key]
        if dotted.removeprefix("config.") in FREE_FORM:
            if value is not None and not hasattr(value, "keys"):
                raise ConfigError(
                    f"{dotted}={value!r} must be a section of keys (a ConfigDict); fix "
                    "the config file"
                )
            continue
        if key not in reference:
            raise ConfigError(
                f"{dotted} is not a key of the "
                f"config{_did_you_mean(key, reference.keys(), dotted)}; remove it, or name a key "
                "of engine/schema.py base_config()"
            )
        default = reference[key]
        if hasattr(default, "keys"):
            if not hasattr(value, "keys"):
                raise ConfigError(
                    f"{dotted}={value!r} must be a section of keys; set its keys, e.g. "
                    f"{dotted}.{next(iter(default.keys()), 'key')}"
                )
            _check_section(value, default, dotted)
        else:
            _check_value(dotted, value, default)


def _check_keywords(path: str, given: dict[str, Any], defaults: dict[str, Any], owner: str) -> None:
    for key, value in given.items():
        if key not in defaults:
            raise ConfigError(
                f"{path}.{key} is not an argument of "
                f"{owner}{_did_you_mean(key, defaults, f'{path}.{key}')}; known: "
                f"{', '.join(sorted(defaults)) or '(none)'}"
            )
        _check_value(f"{path}.{key}", value, defaults[key])


def _keyword_defaults(function, leave_out=()) -> dict[str, Any]:
    return {
        name: (None if p.default is inspect.Parameter.empty else p.default)
        for name, p in inspect.signature(function).parameters.items()
        if name not in leave_out
    }


def _is_import_path(value) -> bool:
    """A "package.module:attr" string: a component of the user's own (or "given:...", an
    object given to `sequax.train`)."""
    return isinstance(value, str) and ":" in value


def _check_model(model: dict[str, Any]) -> None:
    name = model.pop("name", "mlp")
    if _is_import_path(name):  # the user's factory: its arguments are checked when called
        return
    if name not in MODELS and name != "torch":
        known = [*MODELS, "torch"]
        raise ConfigError(
            f"config.model.name={name!r} is unknown{_did_you_mean(name, known)}; "
            f"known: {', '.join(map(repr, known))}"
        )
    _check_left_over(name, model)
    if name == "torch":  # the torch bridge checks its own keys (sequax.engine.torch_bridge.config)
        return
    defaults = _keyword_defaults(MODELS[name], ("num_classes",))
    _check_keywords("config.model", model, defaults, f"model {name!r}")
    dropout = model.get("dropout", 0.0)
    if isinstance(dropout, (int, float)) and not 0 <= dropout < 1:
        raise ConfigError(
            f"config.model.dropout={dropout!r} must be in [0, 1) (the probability of dropping a "
            "unit; 0 switches dropout off)"
        )
    for key, value in model.items():  # a tuple of sizes: each element a positive integer
        default = defaults.get(key)
        if isinstance(default, tuple) and default and all(type(d) is int for d in default):
            sizes = value if isinstance(value, (tuple, list)) else None
            if sizes is None or not all(type(v) is int and v > 0 for v in sizes):
                raise ConfigError(
                    f"config.model.{key}={value!r} must be a tuple of positive integers "
                    f"(e.g. {default}); fix the override or the config file"
                )


def _check_left_over(name: str, model: dict[str, Any]) -> None:
    """`--config.model.name=resnet18` on a config whose section holds the MLP's keys: the
    override changes the name only, so the keys of the model it replaced are left over (the
    generic "not an argument" would not say why they are there)."""
    from sequax.engine.torch_bridge.config import KEYS as TORCH_KEYS  # no torch import

    own = set(TORCH_KEYS) if name == "torch" else set(_keyword_defaults(MODELS[name]))
    for other, function in MODELS.items():
        left = sorted(set(model) & set(_keyword_defaults(function)) - own) if other != name else []
        if left:
            raise ConfigError(
                f"config.model.{left[0]} is an argument of model {other!r}, not of {name!r}: "
                f"config.model.name={name!r} changed the name but the section still holds the "
                f"keys of {other!r}; set the whole section in the config file, e.g. config.model = "
                f"ml_collections.ConfigDict(dict(name={name!r}, ...))"
            )


def _check_options(config) -> None:
    name = _get(config, "data.scenario")
    if name not in scenario_lib.SCENARIO_BUILDERS:
        return  # reported with the choices above, or the user's own builder
    builder = scenario_lib.SCENARIO_BUILDERS[name]
    options = _section(config, "data.options")
    _check_keywords(
        "config.data.options",
        options,
        _keyword_defaults(builder, ("source", "num_tasks", "seed")),
        f"the {name!r} scenario",
    )
    source, tasks = _get(config, "data.source"), _get(config, "data.num_tasks")
    protocol = {"increments", "base", "increment"} & set(options)  # checked by `split` itself
    if name == "split" and source in SOURCE_CLASSES and isinstance(tasks, int) and not protocol:
        per_task = options.get("classes_per_task", _keyword_defaults(builder)["classes_per_task"])
        classes = SOURCE_CLASSES[source]
        if per_task < 1 or tasks * per_task > classes:
            fit = max(classes // max(tasks, 1), 1)
            raise ConfigError(
                f"config.data.num_tasks={tasks} x config.data.options.classes_per_task={per_task} "
                f"= {tasks * per_task} classes, but {source} has {classes}; set num_tasks x "
                f"classes_per_task <= {classes} (e.g. classes_per_task={fit})"
            )


def _check_algorithm(section: dict[str, Any]) -> None:
    name = section.pop("name", None)
    if isinstance(name, str) and "+" in name:  # combine(...): each part's keys under its name
        parts = name.split("+")
        for part in parts:
            _check_method(part, dict(section.pop(part, None) or {}), f"config.algorithm.{part}")
        if section:
            raise ConfigError(
                f"config.algorithm.{sorted(section)[0]}: {name!r} takes each part's "
                "hyper-parameters under its name "
                f"({', '.join(f'config.algorithm.{p}.*' for p in parts)})"
            )
        return
    _check_method(name, section, "config.algorithm")


def _check_method(name, given: dict[str, Any], path: str) -> None:
    """Unknown hyper-parameters and generic ranges; the method's own rules (replay_batch <=
    capacity, ...) are its `__post_init__`'s, run when it is built."""
    try:
        defaults = algorithms.hyperparameters(name)
    except ValueError as error:
        known = sorted(algorithms.REGISTRY)
        hint = _did_you_mean(name, known) if isinstance(name, str) else ""
        raise ConfigError(f"config.algorithm.name: {error}{hint}") from None
    if not defaults and not isinstance(algorithms.resolve(name), type):
        return  # a factory: its arguments are checked when it is called
    _check_keywords(path, given, defaults, f"algorithm {name!r}")
    for key in POSITIVE_FIELDS:
        if key in given and given[key] is not None and given[key] < 1:
            raise ConfigError(
                f"{path}.{key}={given[key]!r} must be at least 1; set a positive count"
            )
    for key in NONNEGATIVE_FIELDS:
        if key in given and given[key] is not None and given[key] < 0:
            raise ConfigError(
                f"{path}.{key}={given[key]!r} must be >= 0 (a weight or count); use 0 to switch "
                f"the term off"
            )
    try:  # the method's own rules (replay_batch <= capacity, ...): its __post_init__
        algorithms.make(name, **given)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: {error}") from None


def _check_stream_options(config, algorithm) -> None:
    """A task-free stream hides the boundaries, so a method that needs them is refused: its
    declaration `needs_boundaries` (a reason, "" for none) says why it needs them."""
    if int(config.eval.get("every_steps", 0)) and config.data.get("pipeline") == "stream":
        raise ConfigError(
            "config.eval.every_steps > 0 needs config.data.pipeline='device' (the grain stream "
            "reads whole chunks); set config.eval.every_steps=0 or config.data.pipeline='device'"
        )
    if int(config.training.get("patience", 0)) and not config.data.get("validation"):
        raise ConfigError(
            "config.training.patience > 0 stops on the validation split, but there is none; set "
            "config.data.validation (e.g. 0.1) or config.training.patience=0"
        )
    if config.data.get("validation") and config.data.get("draws_per_run"):
        raise ConfigError(
            "config.data.validation is not held out of per-run draws; set "
            "config.data.draws_per_run=False or config.data.validation=0"
        )
    if not config.training.get("task_free", False):
        return
    for prefix, part in _parts(algorithm) or [("config.algorithm.", algorithm)]:
        reason = getattr(part, "needs_boundaries", "")  # a declaration, not a hook
        if reason:
            raise ConfigError(
                f"{prefix}name: {type(part).__name__} needs task boundaries ({reason}), but "
                "config.training.task_free=True hides them; use a method that runs without "
                "them (naive, er, der, derpp, er_ace, er_aml, mir, gss, agem_r, lamaml) or set "
                "config.training.task_free=False"
            )


def _parts(algorithm) -> list[tuple[str, Any]]:
    """(config prefix, method) of each part: one for a plain method, several for `combine`."""
    if isinstance(algorithm, algorithms.Combined):
        return [(f"config.algorithm.{name}.", part) for name, part in algorithm.parts]
    return [("config.algorithm.", algorithm)] if dataclasses.is_dataclass(algorithm) else []


def _feature_width(model: dict[str, Any]) -> int | None:
    """The width of the built-in MLP's "features" (its last hidden layer), None otherwise."""
    if model.get("name", "mlp") != "mlp":
        return None
    widths = tuple(model.get("widths", _keyword_defaults(MODELS["mlp"])["widths"]))
    return int(widths[-1]) if widths else None
