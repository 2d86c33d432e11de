"""Rotated MNIST (DER protocol): 20 tasks, angle ~ U[0, 180) per task, domain-IL, MLP
784-100-100-10, batch 128, 1 epoch per task.

A-GEM, episodic memory of 500 (25 examples stored at the end of each task), the published
best settings (DER best-args, rot-mnist, A-GEM buffer 500: lr 0.3, reference batch mb 128;
../shared/PROTOCOLS.md §A, verified).

    python -m sequax.launch.train --config=configs/rmnist_agem.py --workdir=runs/rmnist_agem
    python -m sequax.launch.train --config=configs/rmnist_agem.py:local \
        --workdir=/tmp/rmnist_agem  # short CPU run

Expected: DER Table 2, A-GEM-500: domain-IL ACC 80.31 % (± 6.29). Not yet run on full data
here (20 tasks of 60,000 images: too long for the shared 2-core machine); `:local` runs.
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_config(
        "rotated", "agem", lr=0.3, capacity=500, replay_batch=128, num_tasks=20
    )
    return common.finish(config, arg)
