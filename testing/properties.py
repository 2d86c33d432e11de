"""The properties of the method contract, and the error that names a broken one.

Every check of `sequax.testing` raises `ContractError`, an `AssertionError` (so pytest shows
it as a failed assertion), whose one-line message names the method, the broken property and
the first thing found wrong:

    try:
        sequax.testing.check_algorithm(MyER(capacity=16))
    except sequax.testing.ContractError as error:
        error.property  # "state structure stable across update"
"""

from __future__ import annotations

import re

PROTOCOL = "satisfies the protocol"
JITS = "jits"
STABLE_UPDATE = "state structure stable across update"
STABLE_END_TASK = "state structure stable across end_task"
STABLE_START_TASK = "state structure stable across start_task"
NO_RETRACE = "no retrace over two tasks"
DETERMINISTIC = "deterministic given the seed"
CHECKPOINT = "survives a checkpoint round trip"

# Every hook is traced (abstractly) before anything compiles, so a state that changes shape
# is reported as such, not as the compile error it would cause in the train loop.
PROPERTIES = (
    PROTOCOL,
    JITS,
    STABLE_UPDATE,
    STABLE_END_TASK,
    STABLE_START_TASK,
    NO_RETRACE,
    DETERMINISTIC,
    CHECKPOINT,
)

_MAX_DETAIL = 400  # characters: a message stays one readable line


class ContractError(AssertionError):
    """A method breaks a property of the contract: "MyER breaks '<property>': <detail>"."""

    def __init__(self, method: str, property: str, detail: str):
        self.method, self.property, self.detail = method, property, one_line(detail)
        super().__init__(f"{method} breaks '{property}': {self.detail}")


def one_line(text: str, limit: int = _MAX_DETAIL) -> str:
    """`text` on one line, without memory addresses (they differ between runs), shortened."""
    text = re.sub(r" at 0x[0-9a-f]+", "", " ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reason(error: BaseException) -> str:
    """An exception as "Type: its first line" (JAX's errors continue with pages of advice)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def is_signature_error(error: BaseException) -> bool:
    """A hook called with the protocol's arguments that does not take them."""
    return isinstance(error, TypeError) and bool(
        re.search(r"positional argument|keyword argument|required argument", str(error))
    )


def method_name(algorithm) -> str:
    """The name messages use: the class name, or the parts' names of a `combine`d method."""
    parts = getattr(algorithm, "parts", None)
    if isinstance(parts, tuple) and parts and all(isinstance(p, tuple) for p in parts):
        return "+".join(str(name) for name, _ in parts)
    return type(algorithm).__name__
