#!/usr/bin/env bash
# import-linter's layer contract (pyproject.toml) and the file-cycle check, on the package as
# it is installed. pyproject maps the repository's top-level folders to sequax.* (api/ is
# `sequax` itself); api/ holds a symlink to each of them (api/engine -> ../engine, ...), so
# grimp, which walks the `sequax` folder, finds every subpackage from an editable install and
# plain `lint-imports` works from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$(dirname "$PY")/lint-imports"
"$PY" .ci/import_cycles.py
