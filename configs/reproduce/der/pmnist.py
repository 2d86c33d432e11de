"""DER Table 2, PMNIST cells: `--config=configs/reproduce/der/pmnist.py:METHOD[,BUFFER][,local]`.

    python -m sequax.launch.train --config=configs/reproduce/der/pmnist.py:er,500 \
        --workdir=runs/der_pmnist_er500
    python -m sequax.launch.reproduce --table=der --cells=pmnist/  # every pmnist cell, 3 seeds each

METHOD is one of the paper's rows (sgd, joint, oewc, si, lwf, er, gem, agem, icarl, der,
derpp, where the paper reports it for this benchmark); buffer methods take BUFFER 200, 500
or 5120. Hyper-parameters and published values: `table.py`.
"""

from sequax.configs.reproduce.der import table


def get_config(arg=None):
    return table.get_config_for("pmnist", arg)
