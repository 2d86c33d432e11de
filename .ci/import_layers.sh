#!/usr/bin/env bash
# import-linter on the package as it installs: pyproject maps the repository's top-level
# folders to sequax.* (api/ is `sequax` itself), which grimp cannot walk from an editable
# install, so the package is copied into a temporary tree laid out as site-packages has it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir -p "$tree/sequax"
cp api/*.py "$tree/sequax/"
for folder in core algorithms data engine launch configs testing; do
  (cd "$folder" && find . -name '*.py' -exec install -D -m 644 {} "$tree/sequax/$folder/{}" \;)
done
cp pyproject.toml "$tree/"
cp .ci/import_cycles.py "$tree/"
repo=$PWD
cd "$tree"
PYTHONPATH="$tree" "$repo/$(dirname "$PY")/lint-imports" pyproject.toml
PYTHONPATH="$tree" "$repo/$PY" import_cycles.py
