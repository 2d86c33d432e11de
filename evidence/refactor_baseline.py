"""Accuracy matrices before and after a refactor (issue 15: "A refactor keeps results").

    python evidence/refactor_baseline.py --out=evidence/refactor_baseline/before.json
    python evidence/refactor_baseline.py --out=evidence/refactor_baseline/after.json
    python evidence/refactor_baseline.py --compare evidence/refactor_baseline/before.json \
        evidence/refactor_baseline/after.json

Each case is one `python -m sequax.launch.train` process (the product's own entry point), so
the script depends on nothing but the command line. The matrices of every run (class-IL and
task-IL, and the random-initialisation row) are stored exactly as the run wrote them;
`--compare` reports, per case, whether they are bit-identical and the largest difference.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CELL = "evidence/cell_config.py"
# (name, config, runs): runs > 1 trains the seeds vmapped in one program.
CASES = [
    ("quickstart", "configs/quickstart.py", 1),
    ("der/smnist/er-500 (one run)", f"{CELL}:der,smnist,er,500", 1),
    ("der/smnist/derpp-500", f"{CELL}:der,smnist,derpp,500", 2),
    ("der/smnist/oewc", f"{CELL}:der,smnist,oewc", 2),
    ("der/smnist/agem-200", f"{CELL}:der,smnist,agem,200", 2),
    ("der/smnist/icarl-500", f"{CELL}:der,smnist,icarl,500", 2),
    ("der/smnist/gem-200", f"{CELL}:der,smnist,gem,200", 2),
    ("der/smnist/lwf", f"{CELL}:der,smnist,lwf", 2),
    ("der/pmnist/si", f"{CELL}:der,pmnist,si", 2),
    ("mirzadeh/pmnist/mc_sgd", f"{CELL}:mirzadeh,pmnist,mc_sgd", 2),
    ("mirzadeh/pmnist/ewc", f"{CELL}:mirzadeh,pmnist,ewc", 2),
    ("mirzadeh/smnist/hat", f"{CELL}:mirzadeh,smnist,hat", 2),
    ("mirzadeh/rmnist_lamaml/lamaml-200", f"{CELL}:mirzadeh,rmnist_lamaml,lamaml,200", 2),
]


def matrices(workdir: Path, runs: int) -> list[dict]:
    folders = [workdir] if runs == 1 else sorted((workdir / "runs").iterdir())
    return [json.loads((f / "accuracy_matrix.json").read_text()) for f in folders]


def record(out: Path, only: list[str]) -> None:
    results = json.loads(out.read_text()) if out.is_file() else {}
    for name, config, runs in CASES:
        if only and not any(name.startswith(o) for o in only):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            cmd = [
                sys.executable,
                "-m",
                "sequax.launch.train",
                f"--config={config}",
                f"--workdir={tmp}",
                f"--config.runs={runs}",
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{name}: FAILED\n{done.stderr[-3000:]}", flush=True)
                continue
            results[name] = {
                "command": " ".join(cmd[1:]),
                "wall_s": time.perf_counter() - t0,
                "runs": matrices(Path(tmp), runs),
            }
        print(f"{name}: {results[name]['wall_s']:.0f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    changed = 0
    for name in a:
        if name not in b:
            print(f"{name}: missing after")
            changed += 1
            continue
        diffs = []
        for ra, rb in zip(a[name]["runs"], b[name]["runs"], strict=True):
            for key in ("class_il", "task_il"):
                diffs.append(np.nanmax(np.abs(np.array(ra[key], float) - np.array(rb[key], float))))
            for key in ra["random_init"]:
                diffs.append(
                    np.max(
                        np.abs(np.array(ra["random_init"][key]) - np.array(rb["random_init"][key]))
                    )
                )
        worst = float(max(diffs))
        changed += worst > 0
        final = [np.nanmean(np.array(r["class_il"], float)[-1]) for r in b[name]["runs"]]
        print(
            f"| {name} | {'identical' if worst == 0 else f'max |diff| {100 * worst:.2f} points'} | "
            f"{100 * np.mean(final):.2f} |"
        )
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--compare", nargs=2, type=Path)
    args = parser.parse_args()
    if args.compare:
        sys.exit(1 if compare(*args.compare) else 0)
    record(args.out, args.only)


if __name__ == "__main__":
    main()
