"""Permuted MNIST (DER protocol): 20 tasks, every task permuted, domain-IL, MLP 784-100-100-10,
batch 128, 1 epoch per task.

GEM, episodic memory of 500 (25 examples stored at the end of each task), the published
best settings (DER best-args, perm-mnist, GEM: lr 0.1, margin γ 0.5; ../shared/PROTOCOLS.md
§A, verified).

    python -m sequax.launch.train --config=configs/pmnist_gem.py --workdir=runs/pmnist_gem
    python -m sequax.launch.train --config=configs/pmnist_gem.py:local \
        --workdir=/tmp/pmnist_gem  # short CPU run

Expected: DER Table 2, GEM-500: domain-IL ACC 76.88 %. Not yet run on full data here (20
tasks of 60,000 images: too long for the shared 2-core machine); `:local` runs.
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_config("permuted", "gem", lr=0.1, capacity=500, num_tasks=20, gamma=0.5)
    return common.finish(config, arg)
