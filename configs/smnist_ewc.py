"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run, MLP 784-100-100-10, batch 10, 1 epoch per task.

Online EWC with the DER code's Fisher (empirical labels, weighted by p(y|x)); mammoth's e_lambda is lam/2 here (our penalty carries the paper's 1/2), so DER's e_lambda 90.0 is lam=180.0.

    python -m sequax.launch.train --config=configs/smnist_ewc.py --workdir=runs/smnist_ewc
    python -m sequax.launch.train --config=configs/smnist_ewc.py:local --workdir=/tmp/smnist_ewc  # short CPU run

Expected (2-core CPU, seed 0): EXPECTED
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    return common.finish(common.der_config("split", "ewc", lr=0.03, lam=180.0, gamma=1.0, online=True, likelihood_weighted=True), arg)
