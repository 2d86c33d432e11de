"""Config strings that name a function: "package.module:function" (`config.model.factory`,
`config.data.factory`), resolved with a one-line error for every way they can be wrong."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def load_callable(spec: Any, key: str, error: type[Exception], hint: str) -> Callable[..., Any]:
    """The callable named by `spec` ("package.module:function") in config key `key`; see
    `load_attribute`, which this is with a callable required."""
    missing = object()
    function = getattr(_import(spec, key, error, hint), spec.split(":")[1], missing)
    if not callable(function):
        module_name, attribute = spec.split(":")
        raise error(f"config.{key}={spec!r}: {module_name} has no callable {attribute!r}")
    return function


def load_attribute(spec: Any, key: str, error: type[Exception], hint: str) -> Any:
    """The object named by `spec` ("package.module:attr") in config key `key`.

    A malformed string, a module that fails to import (for any reason: the user's module is
    the config's problem) or a missing attribute raises `error` in one line
    naming `key`; `hint` completes the malformed-string message (what the function is for).
    """
    missing = object()
    value = getattr(_import(spec, key, error, hint), spec.split(":")[1], missing)
    if value is missing:
        module_name, attribute = spec.split(":")
        raise error(f"config.{key}={spec!r}: {module_name} has no attribute {attribute!r}")
    return value


def _import(spec: Any, key: str, error: type[Exception], hint: str):
    """The module of `spec` ("package.module:attr"), or `error` in one line."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise error(f"config.{key}={spec!r} must name {hint}")
    module_name = spec.split(":")[0]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the config's problem
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise error(
            f"config.{key}={spec!r}: cannot import {module_name!r} "
            f"({type(exc).__name__}: {first}); give an importable 'package.module:function'"
        ) from None
    return module
