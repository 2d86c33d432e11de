"""DER MNIST-360 cells: `--config=configs/reproduce/der_gcl/mnist360.py:METHOD,BUFFER[,local]`.

    python -m sequax.launch.train --config=configs/reproduce/der_gcl/mnist360.py:der,500 \
        --workdir=runs/mnist360_der500
    python -m sequax.launch.reproduce --table=der_gcl --cells=mnist360/der  # 5 seeds each

METHOD is one of the table's rows (er, agem_r, gss, der, derpp); BUFFER 200, 500 or 1000.
Hyper-parameters and published values: `table.py`. The table's metric, the pooled accuracy
over the whole test set, is `table.pooled_accuracy(WORKDIR)` (not the summary's class-IL acc).
"""

from sequax.configs.reproduce.der_gcl import table


def get_config(arg=None):
    return table.get_config_for("mnist360", arg)
