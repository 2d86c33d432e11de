"""Permuted MNIST (DER protocol): 20 tasks, every task permuted, domain-IL, MLP 784-100-100-10,
batch 128, 1 epoch per task.

A-GEM, episodic memory of 500 (25 examples stored at the end of each task), the published
best settings (DER best-args, perm-mnist, A-GEM, all buffers: lr 0.1, reference batch mb 128;
../shared/PROTOCOLS.md §A, verified).

    python -m sequax.launch.train --config=configs/pmnist_agem.py --workdir=runs/pmnist_agem
    python -m sequax.launch.train --config=configs/pmnist_agem.py:local \
        --workdir=/tmp/pmnist_agem  # short CPU run

Expected: DER Table 2, A-GEM-500: domain-IL ACC 67.56 %. Not yet run on full data here (20
tasks of 60,000 images: too long for the shared 2-core machine); `:local` runs.
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_config(
        "permuted", "agem", lr=0.1, capacity=500, replay_batch=128, num_tasks=20
    )
    return common.finish(config, arg)
