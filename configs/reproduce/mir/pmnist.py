"""MIR Table 1, pmnist cells: `--config=configs/reproduce/mir/pmnist.py:METHOD,BUFFER[,local]`.

    python -m sequax.launch.train --config=configs/reproduce/mir/pmnist.py:mir,500 \
        --workdir=runs/mir_pmnist_mir500
    python -m sequax.launch.reproduce --table=mir --cells=pmnist/  # every pmnist cell

METHOD is er (the reference's rand_replay) or mir (ER-MIR); BUFFER 200, 500 or 1000 (20, 50
or 100 per class). Settings and published values: `table.py`.
"""

from sequax.configs.reproduce.mir import table


def get_config(arg=None):
    return table.get_config_for("pmnist", arg)
