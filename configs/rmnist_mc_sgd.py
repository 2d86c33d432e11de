"""Rotated MNIST (Mirzadeh protocol, ../shared/PROTOCOLS.md §B): 20 tasks, task t (1-based)
rotated by (t−1)·10° − U[0,10)°, domain-IL, MLP 784-256-256-10, 1 epoch per task, full data.

MC-SGD as configs/pmnist_mc_sgd.py (its docstring says why the line search's lr is not the
published 0.05), with the search starting at α = 0.1 (the published start) rather than 0.3:
on this stream, where tasks are closer, the start at 0.3 lets w̄ follow ŵ_t and forget
(seed 0, lr 0.003: α 0.3 78.25 %, forgetting 16.7; α 0.2 at lr 0.002 79.77 %; α 0.1 81.17 %,
forgetting 8.6). The paper's research code
(imirzadeh/CL-LinearModeConnectivity) rotates task t by a fixed (t−1)·9° with no jitter
(`rotated(protocol="step", step=9.0, jitter=0.0)` gives that stream); the shared table uses
the Stable SGD paper's stream, as here.

    python -m sequax.launch.train --config=configs/rmnist_mc_sgd.py --workdir=runs/rmnist_mc_sgd
    python -m sequax.launch.train --config=configs/rmnist_mc_sgd.py:local \
        --workdir=/tmp/rmnist_mc_sgd  # short CPU run

Published: average accuracy 82.3 %, forgetting 0.08.
"""

from sequax.configs import common
from sequax.configs.pmnist_mc_sgd import MC_SGD
from sequax.configs.pmnist_stable_sgd import mirzadeh_config

RMNIST_MC_SGD = {**MC_SGD, "init_position": 0.1}


def get_config(arg: str | None = None):
    return common.finish(
        mirzadeh_config("rotated", "mc_sgd", dropout=0.2, batch_size=64, **RMNIST_MC_SGD), arg
    )
