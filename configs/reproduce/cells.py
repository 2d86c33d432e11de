"""What every reproduction table shares: a cell is (benchmark, method, buffer or None), keyed
in the table's PUBLISHED dict, and named "benchmark/method[-buffer]" in reports and flags."""

from __future__ import annotations


def cell_name(cell) -> str:
    """("smnist", "er", 500) -> "smnist/er-500"; ("pmnist", "sgd", None) -> "pmnist/sgd"."""
    benchmark, method, buffer = cell
    return f"{benchmark}/{method}" + (f"-{buffer}" if buffer else "")


def require_cell(published: dict, table: str, cell) -> None:
    """A one-line ValueError listing the table's cells unless `cell` is one of them."""
    if cell not in published:
        known = ", ".join(cell_name(c) for c in published)
        raise ValueError(f"no {table}-table cell {cell_name(cell)}; cells: {known}")


def method_buffer_arg(benchmark: str, arg: str | None, example: str) -> tuple[str, int, bool]:
    """(method, buffer, local) of a `--config=<benchmark>.py:METHOD,BUFFER[,local]` argument
    (the online tables' config entry points); one line naming the form otherwise."""
    parts = [p for p in (arg or "").split(",") if p]
    local = "local" in parts
    parts = [p for p in parts if p != "local"]
    if len(parts) != 2:
        raise ValueError(
            f"name a cell: {benchmark}.py:METHOD,BUFFER[,local], e.g. {benchmark}.py:{example}"
        )
    return parts[0], int(parts[1]), local
