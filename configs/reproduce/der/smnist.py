"""DER Table 2, SMNIST cells: `--config=configs/reproduce/der/smnist.py:METHOD[,BUFFER][,local]`.

    python -m sequax.launch.train --config=configs/reproduce/der/smnist.py:er,500 --workdir=runs/der_smnist_er500
    python -m sequax.launch.reproduce --table=der --cells=smnist/   # every smnist cell, 3 seeds each

METHOD is one of the paper's rows (sgd, joint, oewc, si, lwf, er, gem, agem, icarl, der,
derpp, where the paper reports it for this benchmark); buffer methods take BUFFER 200, 500
or 5120. Hyper-parameters and published values: `table.py`.
"""

from sequax.configs import common
from sequax.configs.reproduce.der import table


def get_config(arg=None):
    parts = [p for p in (arg or "").split(",") if p]
    local = "local" in parts
    parts = [p for p in parts if p != "local"]
    if not parts:
        raise ValueError("name a cell: smnist.py:METHOD[,BUFFER][,local], e.g. smnist.py:er,500")
    buffer = int(parts[1]) if len(parts) > 1 else None
    config = table.config("smnist", parts[0], buffer)
    return common.shrink_local(config) if local else config
