"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run,
MLP 784-100-100-10, batch 10, 1 epoch per task.

DER++, reservoir buffer of 500, the published best settings (DER best-args, seq-mnist, buffer 500:
lr 0.03, replay batch 10, α 1.0, β 0.5; ../shared/PROTOCOLS.md §A, verified).

    python -m sequax.launch.train --config=configs/smnist_derpp.py --workdir=runs/smnist_derpp
    python -m sequax.launch.train --config=configs/smnist_derpp.py:local \
        --workdir=/tmp/smnist_derpp  # short CPU run

Expected (seed 0, one run, 2-core CPU, full data): class-IL ACC 90.77 %, task-IL 98.88 % (DER Table
2, DER++-500: 91.00 / 98.94); about 8 s wall. Gaps to the paper are investigated with more seeds in
the DER reproduction (configs/reproduce/der, a later issue).
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_config(
        "split", "derpp", lr=0.03, capacity=500, replay_batch=10, alpha=1.0, beta=0.5
    )
    return common.finish(config, arg)
