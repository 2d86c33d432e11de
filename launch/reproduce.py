"""Reproduce a published table: every cell, several seeds each, against the paper.

    python -m sequax.launch.reproduce --table=der                    # the whole MNIST table
    python -m sequax.launch.reproduce --table=der --cells=smnist/er  # cells whose name starts so
    python -m sequax.launch.reproduce --table=der --dry_run          # list and check the cells
    python -m sequax.launch.reproduce --table=mirzadeh               # Stable SGD / MC-SGD table
    python -m sequax.launch.reproduce --table=der_gcl                # DER's MNIST-360 (general CL)
    python -m sequax.launch.reproduce --table=mir                    # MIR's MNIST rows
                                                                     # (+ forgetting)
    python -m sequax.launch.reproduce --table=der --update_docs      # + docs/reproductions/der.md

Each cell (`configs/reproduce/<table>/table.py`) trains `--seeds` seeds vmapped in one
program (`config.runs`) into WORKDIR/<benchmark>/<method>[-<buffer>]/, exactly as
`sequax.launch.train` would; a cell whose summary.json exists is read back, so an
interrupted table resumes. The report goes to WORKDIR/<table>[-<variant>]/report.md (or
`--output`): a command writes inside its workdir, never into the repository it may have been
installed from. `--update_docs` also writes the repository's copy,
docs/reproductions/<table>[-<variant>].md (from a source checkout only: one line and exit 2
before anything trains otherwise). The report puts each
cell's mean ± std beside the published value and the difference, marks whether it is within
max(2 points, the published std), adds the published and our average forgetting where the
table lists it (`table.FORGETTING`, e.g. the Mirzadeh table), adds the table's notes on known
differences, and states the seeds, the wall time of the whole table and the command. Every
cell's config is built and checked before the first one trains.
"""

from __future__ import annotations

import datetime
import json
import math
import sys
import time
from pathlib import Path

from absl import app, flags, logging

from sequax.configs import common
from sequax.data import DataError
from sequax.engine import distributed, loop, runs
from sequax.engine.build import ConfigError
from sequax.engine.checkpoint import TrainingDiverged
from sequax.launch.common import (
    define_update_docs,
    initialize_distributed,
    machine,
    parse_flags,
    reject_stray,
    repository_docs,
    stops_in_one_line,
)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as the program (so tests
    can import several launchers into one process)."""
    flags.DEFINE_enum(
        "table", "der", ["der", "mirzadeh", "der_gcl", "mir"], "Which published table."
    )
    flags.DEFINE_integer("seeds", 3, "Seeds per cell (vmapped in one program).")
    flags.DEFINE_list(
        "cells", [], "Only cells whose name starts with one of these (e.g. smnist/,pmnist/er)."
    )
    flags.DEFINE_string(
        "workdir", "runs/reproduce", "One subfolder per cell under WORKDIR/<table>/."
    )
    flags.DEFINE_string(
        "output",
        "",
        "Markdown report; default WORKDIR/<table>[-<variant>]/report.md; '-' prints only.",
    )
    flags.DEFINE_string(
        "variant",
        "",
        "A table's named variant of its cells (table.VARIANTS), e.g. the reference "
        "code's own regime as evidence; results go to WORKDIR/<table>-<variant>/.",
    )
    flags.DEFINE_bool(
        "local",
        False,
        "Shrink every cell to a short CPU run (checks the pipeline, not the numbers).",
    )
    flags.DEFINE_bool(
        "dry_run", False, "Build and check every selected cell's config, list them, train nothing."
    )
    flags.DEFINE_bool(
        "report_only",
        False,
        "Write the report from the cells already done, train nothing "
        "(e.g. while another invocation is still running the table).",
    )
    define_update_docs()


def table_module(name: str):
    if name == "der":
        from sequax.configs.reproduce.der import table

        return table
    if name == "mirzadeh":
        from sequax.configs.reproduce.mirzadeh import table

        return table
    if name == "der_gcl":
        from sequax.configs.reproduce.der_gcl import table

        return table
    if name == "mir":
        from sequax.configs.reproduce.mir import table

        return table
    raise ConfigError(f"--table={name} is unknown; known: der, mirzadeh, der_gcl, mir")


def selected_cells(table, prefixes: list[str], local: bool = False) -> list[tuple]:
    """The cells `--cells` names by prefix; without it every cell but those the table lists in
    NOT_RUN (too long for this machine; `--cells` naming one runs it, and `--local` runs all)."""
    cells = table.cells()
    if not prefixes and not local:
        cells = [c for c in cells if table.cell_name(c) not in getattr(table, "NOT_RUN", {})]
    if prefixes:
        cells = [c for c in cells if any(table.cell_name(c).startswith(p) for p in prefixes)]
        if not cells:
            raise ConfigError(
                f"--cells={','.join(prefixes)} selects no cell; names look like smnist/er-500"
            )
    return cells


def cell_configs(table, cells, seeds: int, local: bool, variant: str = ""):
    """[(cell, config)], each built and its runs grid checked (one-line errors, nothing trains)."""
    out = []
    variants = getattr(table, "VARIANTS", {})
    if variant and variant not in variants:
        raise ConfigError(
            f"--variant={variant} is not one of this table's variants: "
            f"{', '.join(variants) or 'none'}"
        )
    for cell in cells:
        try:
            config = table.config(*cell)
            if variant:
                config = variants[variant][1](cell, config)
            # A table may ask for more seeds on a noisy cell (`table.SEEDS`, with its reason).
            config.runs = max(seeds, getattr(table, "SEEDS", {}).get(table.cell_name(cell), 0))
            if local:
                config = common.shrink_local(config)
                config.data.source = "mnist_packaged"
            runs.make_grid(config)
        except (ConfigError, ValueError, TypeError) as error:
            raise ConfigError(f"cell {table.cell_name(cell)}: {error}") from None
        out.append((cell, config))
    return out


def summary_row(summary: dict) -> dict:
    """The cell's row as a vmapped run's summary gives it (view -> metric -> (mean, std));
    a one-seed run (`--seeds=1`) has no table, so its metrics stand with std 0."""
    if "table" in summary:
        return summary["table"][0]
    views = {
        view: metrics
        for view, metrics in summary.items()
        if isinstance(metrics, dict) and "acc" in metrics
    }
    return {
        view: {name: (value, 0.0) for name, value in metrics.items()}
        for view, metrics in views.items()
    }


def cell_result(summary: dict) -> dict[str, tuple[float, float]]:
    """view -> (mean, std) of the final average accuracy in %, from a run's summary."""
    row = summary_row(summary)
    return {
        view: (100 * row[view]["acc"][0], 100 * row[view]["acc"][1])
        for view in row
        if view not in ("point", "seeds")
    }


def cell_forgetting(summary: dict) -> dict[str, tuple[float, float]]:
    """view -> (mean, std) of the average forgetting (a fraction,
    `engine.metrics.average_forgetting`), for the views where it is defined (joint training has one
    row and none)."""
    row = summary_row(summary)
    return {
        view: tuple(row[view]["forgetting"])
        for view in row
        if view not in ("point", "seeds") and "forgetting" in row[view]
    }


def run_table(
    table,
    cell_configs_,
    workdir: Path,
    *,
    verbose: bool,
    report_only: bool = False,
    train: set[str] | None = None,
) -> list[dict]:
    """Runs (or reads back) each cell; `report_only` skips the cells not done yet, and so does
    `train` (cell names) for the cells it does not name: `--cells` trains the cells it selects
    while the report keeps every other cell already done."""
    results = []
    say = (
        (lambda text: print(text, flush=True))
        if distributed.is_main_process()
        else (lambda text: None)
    )
    for i, (cell, config) in enumerate(cell_configs_):
        name = table.cell_name(cell)
        folder = workdir / name
        done = folder / "summary.json"
        t0 = time.perf_counter()
        done_before = done.is_file()
        if (report_only or (train is not None and name not in train)) and not done_before:
            continue
        if done_before:
            summary = json.loads(done.read_text())
            say(f"[{i + 1}/{len(cell_configs_)}] {name}: done before, read back")
        else:
            say(f"[{i + 1}/{len(cell_configs_)}] {name} ...")
            try:
                summary = loop.run(config, folder, verbose=verbose).summary
            except TrainingDiverged as error:  # one cell's divergence does not stop the table
                say(f"    {name}: not reported, {error}")
                continue
        wall = summary.get("timings", {}).get("wall", time.perf_counter() - t0)
        # A table may read its own metric from the cell's files (der_gcl: the pooled accuracy).
        reader = getattr(table, "cell_result", None)
        ours = reader(summary, folder) if reader else cell_result(summary)
        say(
            f"    {name}: "
            + ", ".join(f"{v} {m:.2f} ± {s:.2f}" for v, (m, s) in ours.items())
            + f" ({wall:.0f} s)"
        )
        results.append(
            dict(
                cell=cell,
                name=name,
                ours=ours,
                wall=wall,
                seeds=summary_row(summary).get("seeds", [config.seed]),
                read_back=done_before,
                forgetting=cell_forgetting(summary),
            )
        )
    return results


def whole_table_timing(workdir: Path, table, results: list[dict], seconds: float) -> dict | None:
    """The measured wall time of one invocation that ran every cell of the table (none read
    back), kept in WORKDIR/table_timing.json so a later report (cells read back) can quote it."""
    path = workdir / "table_timing.json"
    ran_all = len(results) == len(table.cells()) and not any(r["read_back"] for r in results)
    if ran_all and distributed.is_main_process():
        record = {
            "seconds": seconds,
            "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
            **machine(),
        }
        path.write_text(json.dumps(record, indent=2) + "\n")
    return json.loads(path.read_text()) if path.is_file() else None


def _whole_table(table, results: list[dict], timing: dict | None) -> str:
    cells_sum = sum(r["wall"] for r in results) / 60
    if timing:
        return (
            f"**{timing['seconds'] / 60:.1f} min**, measured by one invocation that ran every cell "
            f"({timing['date']}); the cells' own wall times sum to {cells_sum:.1f} min"
        )
    not_run = _not_run(table, results)
    if len(results) + len(not_run) == len(table.cells()):
        skipped = (
            (
                f"; the {len(not_run)} {'cell' if len(not_run) == 1 else 'cells'} listed as not "
                f"run {'is' if len(not_run) == 1 else 'are'} not in it"
            )
            if not_run
            else ""
        )
        return (
            f"**{cells_sum:.1f} min**, the sum of the cells' own wall times (each a whole run: "
            "data, compile, training, evaluation; the cells ran in more than one invocation of "
            f"this command{skipped})"
        )
    return f"not measured yet (cells done so far: {cells_sum:.1f} min)"


def _not_run(table, results: list[dict]) -> dict[str, str]:
    """Cell name -> why it is not run here (`table.NOT_RUN`), for the table's cells without a
    result."""
    done = {r["name"] for r in results}
    return {name: why for name, why in getattr(table, "NOT_RUN", {}).items() if name not in done}


def report(
    table,
    results: list[dict],
    seconds: float,
    local: bool,
    timing: dict | None = None,
    variant: str = "",
) -> str:
    # The command that runs (or resumes) these cells; report-only and output flags left out.
    # `--cells` is left out too: the report covers the whole table (cells of other invocations
    # read back), which the command without it reproduces. `--update_docs` stays: in the
    # repository's copy the command shown is the one that refreshes it.
    kept = [
        a
        for a in sys.argv[1:]
        if not a.startswith(("--report_only", "--output", "--noreport_only", "--cells"))
    ]
    command = " ".join(["python -m sequax.launch.reproduce", *kept])
    info = machine()
    seeds = sorted({s for r in results for s in r["seeds"]})
    lines = [
        f"# Reproduction: {table.TITLE}",
        "",
        "Generated by `launch/reproduce.py`. Command:",
        "",
        f"    {command}",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: "
        f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']:.1f} GiB RAM; Python "
        f"{info['python']}, jax {info['jax']}.",
        f"- Seeds: {min(len(r['seeds']) for r in results)} per cell or more (the seeds column; "
        f"seeds {', '.join(map(str, seeds))} in all), vmapped in one program per cell.",
        f"- Wall time of the whole table: {_whole_table(table, results, timing)} "
        f"(this invocation: {seconds / 60:.1f} min, {sum(not r['read_back'] for r in results)} "
        f"cells run, {sum(r['read_back'] for r in results)} read back).",
    ]
    not_run = _not_run(table, results)
    if len(results) + len(not_run) < len(table.cells()):
        lines.append(
            f"- **Partial**: {len(results)} of the table's {len(table.cells())} cells (the rest "
            "not yet run or not selected); the table's total wall time is not measured yet."
        )
    if variant:
        lines.append(
            f"- **Variant {variant}**: {table.VARIANTS[variant][0]} (`{table.__name__}.VARIANTS`); "
            f"evidence for the notes of the main table, not the table."
        )
    if local:
        lines.append(
            "- **--local**: every cell shrunk to 1,000 training images per task on the packaged "
            "MNIST: a pipeline check, not a reproduction."
        )
    # Tables that list published forgetting (`table.FORGETTING`) get two more columns; the
    # DER table has none and its report stays as it was.
    forgetting = getattr(table, "FORGETTING", None)
    lines += [
        "",
        "Accuracy in % (final average accuracy, mean ± std over the seeds). Within: |ours − "
        "published| ≤ max(2, published std); the published std could not be verified per cell, so "
        f"2 points is the bound used. Published values: {getattr(table, 'SOURCE', 'the paper')}. "
        "Wall: the cell's whole run, all its seeds.",
    ]
    if forgetting is not None:
        lines.append(
            "Forgetting: average forgetting as a fraction (mean ± std over the seeds; the bound "
            f"above is on accuracy only); {table.FORGETTING_DEFINITION}. A published value of – "
            "with `ref` in the within column: no paper reports this protocol, ours is the "
            "reference number."
        )
    extra_head, extra_rule = (
        (" forgetting | published forgetting |", " ---: | ---: |")
        if forgetting is not None
        else ("", "")
    )
    lines += [
        "",
        "| benchmark | method | buffer | setting | ours | published | difference | within "
        f"|{extra_head} seeds | wall (s) |",
        f"| --- | --- | ---: | --- | ---: | ---: | ---: | :---: |{extra_rule} ---: | ---: |",
    ]
    misses = []
    for r in results:
        benchmark, method, buffer = r["cell"]
        published = table.PUBLISHED[r["cell"]]
        for view, value in published.items():
            mean, std = r["ours"].get(view, (float("nan"), 0.0))
            if value is None:  # our reference number: nothing to compare with
                ok, mark, shown, diff_text = True, "ref", "–", "–"
            else:
                diff = mean - value
                ok = abs(diff) <= 2.0
                mark = "yes" if ok else "no"
                verified = "" if r["cell"] in table.VERIFIED else " (recalled)"
                shown, diff_text = f"{value:.2f}{verified}", f"{diff:+.2f}"
            extra = ""
            if forgetting is not None:
                f_mean, f_std = r.get("forgetting", {}).get(view, (float("nan"), 0.0))
                f_value = forgetting.get(r["cell"], {}).get(view)
                f_verified = (
                    "" if r["cell"] in getattr(table, "FORGETTING_VERIFIED", ()) else " (recalled)"
                )
                ours_f = (
                    "–" if math.isnan(f_mean) else f"{f_mean:.3f} ± {f_std:.3f}"
                )  # NaN: not defined (joint)
                extra = f" {ours_f} | {'–' if f_value is None else f'{f_value:.2f}{f_verified}'} |"
            lines.append(
                f"| {benchmark} | {method} | {buffer or '–'} | {view.replace('_', '-')} | "
                f"{mean:.2f} ± {std:.2f} | {shown} | {diff_text} | {mark} |{extra} "
                f"{len(r['seeds'])} | {r['wall']:.0f} |"
            )
            if not ok:
                misses.append((r["name"], view))
    lines += [""]
    lines += [
        "## Cells outside the bound"
        + (" (in this variant; the notes are written for the main table)" if variant else ""),
        "",
    ]
    if not misses:
        lines.append("None.")
    for name, view in misses:
        note = table.NOTES.get(name, "not yet explained.")
        lines.append(f"- **{name} {view.replace('_', '-')}**: {note}")
    if not_run:
        lines += ["", "## Cells not run on this machine", ""]
        lines += [f"- **{name}**: {why}" for name, why in not_run.items()]
    return "\n".join(lines) + "\n"


def main(argv):
    reject_stray(argv)
    logging.set_verbosity(logging.WARNING)
    initialize_distributed()
    table = table_module(FLAGS.table)
    docs = repository_docs() if FLAGS.update_docs else None  # before anything trains
    with distributed.exit_on_failure(), stops_in_one_line("sequax.launch.reproduce"):
        try:
            selected = selected_cells(table, FLAGS.cells, FLAGS.local)
            # Only the selected cells train (`--cells`, or all but NOT_RUN); the report reads back
            # every other cell already done, so the table's document stays whole (a variant
            # applies to some cells only: its report is its selected cells).
            every = selected if FLAGS.dry_run or FLAGS.variant else table.cells()
            chosen = cell_configs(table, every, FLAGS.seeds, FLAGS.local, FLAGS.variant)
        except (ConfigError, DataError) as error:
            print(f"sequax: error: {error}", file=sys.stderr)
            sys.exit(2)
        if FLAGS.dry_run:
            for cell, config in chosen:
                print(
                    f"{table.cell_name(cell)}: {config.algorithm.to_dict()} lr "
                    f"{config.optimizer.lr}"
                )
            return
        start = time.perf_counter()
        workdir = Path(FLAGS.workdir) / (
            FLAGS.table + (f"-{FLAGS.variant}" if FLAGS.variant else "")
        )
        results = run_table(
            table,
            chosen,
            workdir,
            verbose=False,
            report_only=FLAGS.report_only,
            train={table.cell_name(c) for c in selected},
        )
        seconds = time.perf_counter() - start
        timing = None if FLAGS.local else whole_table_timing(workdir, table, results, seconds)
        text = report(table, results, seconds, FLAGS.local, timing, FLAGS.variant)
    if not distributed.is_main_process():
        return
    print("\n" + text)
    for path in documents(workdir, FLAGS.output, docs):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")


def documents(workdir: Path, output: str, docs: Path | None) -> list[Path]:
    """Where the report goes: `output` ('-': nowhere), by default report.md beside the cells it
    reports (`workdir`: WORKDIR/<table>[-<variant>]); and, with `--update_docs` (`docs`: the
    repository's docs folder), docs/reproductions/<table>[-<variant>].md there."""
    paths = [] if output == "-" else [Path(output) if output else workdir / "report.md"]
    return paths + ([docs / "reproductions" / f"{workdir.name}.md"] if docs is not None else [])


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
