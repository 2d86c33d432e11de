"""Pytree comparisons that name the first difference by its path, on one line.

What the contract's messages are made of: the layout (tree structure, then each leaf's
shape and dtype, optionally its weak type: what decides a retrace) and the bits of two states.

    layout_difference(state, stepped)   # "algo.buffer.items changed shape (16, 784) -> (32, 784)"
    value_difference(saved, restored)   # "params.Dense_0.kernel differs in 3 of 12544 elements ..."
    copy = device_copy(state)           # survives the donation of `state` to a jitted step
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def path_name(path: tuple, prefix: str = "") -> str:
    """`algo.buffer.items` for the path of a leaf (dict keys, attributes and indices alike)."""
    name = jax.tree_util.keystr(tuple(path), simple=True, separator=".")
    return ".".join(part for part in (prefix, name) if part) or "the state"


def is_key_array(x) -> bool:
    """A typed PRNG key array (`jax.random.key`), whose bits are `jax.random.key_data`."""
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def aval(x) -> tuple:
    """(shape, dtype, weak_type) of an array, a tracer, a `ShapeDtypeStruct` or a scalar."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return tuple(x.shape), x.dtype, bool(x.weak_type)
    try:
        typed = jax.typeof(x)
    except TypeError:  # not an array type at all: a Python object where a leaf should be
        return None, type(x).__name__, False
    return tuple(typed.shape), typed.dtype, bool(getattr(typed, "weak_type", False))


def abstract(tree: PyTree) -> PyTree:
    """The tree's `ShapeDtypeStruct`s, weak types kept (what a jit cache entry is keyed on)."""

    def one(x):
        shape, dtype, weak = aval(x)
        return jax.ShapeDtypeStruct(shape, dtype, weak_type=weak)

    return jax.tree.map(one, tree)


def device_copy(tree: PyTree) -> PyTree:
    """A copy in fresh buffers: unaffected when the original is donated to a jitted step."""
    return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, tree)


def _node(tree) -> tuple[Any, list]:
    """(node data, [(key, child), ...]) of the root of `tree`; node data None for a leaf."""
    treedef = jax.tree.structure(tree)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return None, []
    pairs, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)
    return treedef.node_data(), [(path[0], child) for path, child in pairs]


def _kind(node_data) -> str:
    return "leaf" if node_data is None else node_data[0].__name__


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - static data of any type (arrays have no truth value)
        return a is b


def structure_difference(a: PyTree, b: PyTree, prefix: str = "", _path: tuple = ()) -> str | None:
    """Where the tree structures of `a` and `b` first differ, or None when they agree."""
    if not _path and jax.tree.structure(a) == jax.tree.structure(b):
        return None
    here = path_name(_path, prefix)
    data_a, children_a = _node(a)
    data_b, children_b = _node(b)
    if data_a is None or data_b is None or data_a[0] is not data_b[0]:
        if data_a is None and data_b is None:
            return None
        return f"{here} changed from a {_kind(data_a)} to a {_kind(data_b)}"
    keys_a, keys_b = [k for k, _ in children_a], [k for k, _ in children_b]
    added = [k for k in keys_b if k not in keys_a]
    removed = [k for k in keys_a if k not in keys_b]
    if added or removed:
        key, verb = (added[0], "appeared") if added else (removed[0], "disappeared")
        more = len(added) + len(removed) - 1
        return f"{path_name((*_path, key), prefix)} {verb}" + (
            f" (and {more} more)" if more else ""
        )
    if not _same(data_a[1], data_b[1]):
        return f"{here} ({_kind(data_a)}) changed its static fields: {data_a[1]!r} -> {data_b[1]!r}"
    for (key, x), (_, y) in zip(children_a, children_b):
        found = structure_difference(x, y, prefix, (*_path, key))
        if found:
            return found
    if _path:
        return None
    return f"the tree structure changed: {jax.tree.structure(a)} -> {jax.tree.structure(b)}"


def layout_difference(
    a: PyTree, b: PyTree, prefix: str = "", *, weak_types: bool = False
) -> str | None:
    """The first difference in structure, then in a leaf's shape or dtype (and weak type when
    `weak_types`: a leaf becoming a weakly typed Python scalar retraces a jitted function)."""
    found = structure_difference(a, b, prefix)
    if found:
        return found
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        (shape_a, dtype_a, weak_a), (shape_b, dtype_b, weak_b) = aval(x), aval(y)
        name = path_name(path, prefix)
        if shape_a is None or shape_b is None:
            return f"{name} holds a Python {dtype_a if shape_a is None else dtype_b}, not an array"
        if shape_a != shape_b:
            return f"{name} changed shape {shape_a} -> {shape_b}"
        if dtype_a != dtype_b:
            return f"{name} changed dtype {dtype_a} -> {dtype_b}"
        if weak_types and weak_a != weak_b:
            return f"{name} ({dtype_a}{list(shape_a)}) " + (
                "became weakly typed (a Python scalar in the state)"
                if weak_b
                else "stopped being weakly typed"
            )
    return None


def host_bits(x) -> np.ndarray:
    """The leaf on the host, typed keys as their key data, as one row of bytes per element."""
    if is_key_array(x):
        x = jax.random.key_data(x)
    array = np.ascontiguousarray(np.asarray(x))
    return array.reshape(-1).view(np.uint8).reshape(array.size, array.dtype.itemsize)


def value_difference(a: PyTree, b: PyTree, prefix: str = "") -> str | None:
    """The first difference between two states bit for bit (layout first); None if identical.

    Bits, not values: NaN equals a NaN of the same bits and 0.0 differs from -0.0."""
    found = layout_difference(a, b, prefix)
    if found:
        return found
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        bits_x, bits_y = host_bits(x), host_bits(y)
        differs = np.any(bits_x != bits_y, axis=1)
        if differs.any():
            first = int(np.argmax(differs))
            shape = aval(x)[0]
            index = tuple(int(i) for i in np.unravel_index(first, shape)) if shape else ()
            shown_x, shown_y = _element(x, first, len(differs)), _element(y, first, len(differs))
            return (
                f"{path_name(path, prefix)} differs in {int(differs.sum())} of {len(differs)} "
                f"elements (first at {index}: {shown_x!r} vs {shown_y!r})"
            )
    return None


def _element(x, index: int, size: int):
    values = np.asarray(jax.random.key_data(x) if is_key_array(x) else x).reshape(-1)
    return values[index].item() if values.size == size else "..."


def program_difference(first, second) -> str | None:
    """Where two traces of one function (`jax.make_jaxpr`'s `ClosedJaxpr`s) differ, or None:
    the program text (literals included) first, then the values of its captured constants."""
    text_a, text_b = str(first.jaxpr).splitlines(), str(second.jaxpr).splitlines()
    if text_a != text_b:
        for number, (line_a, line_b) in enumerate(zip(text_a, text_b)):
            if line_a != line_b:
                return (
                    f"line {number} of its jaxpr reads {line_a.strip()!r}, then {line_b.strip()!r}"
                )
        return f"its jaxpr has {len(text_a)} lines, then {len(text_b)}"
    if len(first.consts) != len(second.consts):
        return f"it captures {len(first.consts)} constants, then {len(second.consts)}"
    host = lambda c: c if is_key_array(c) else np.asarray(c)  # noqa: E731
    for number, (x, y) in enumerate(zip(first.consts, second.consts)):
        found = value_difference(host(x), host(y), prefix=f"constant {number}")
        if found:
            return f"the captured {found}"
    return None
