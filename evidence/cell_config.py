"""One reproduction cell as a config file, for `sequax.launch.train`:

    python -m sequax.launch.train --config=evidence/cell_config.py:der,smnist,er,500 \
        --workdir=/tmp/c

The argument is TABLE,BENCHMARK,METHOD[,BUFFER]; the cell's config is exactly the one
`python -m sequax.launch.reproduce --table=TABLE --cells=BENCHMARK/METHOD[-BUFFER]` trains.
"""

import importlib


def get_config(arg=None):
    table, benchmark, method, *buffer = arg.split(",")
    module = importlib.import_module(f"sequax.configs.reproduce.{table}.table")
    return module.config(benchmark, method, int(buffer[0]) if buffer else None)
