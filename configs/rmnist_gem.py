"""Rotated MNIST (DER protocol): 20 tasks, angle ~ U[0, 180) per task, domain-IL, MLP
784-100-100-10, batch 128, 1 epoch per task.

GEM, episodic memory of 500 (25 examples stored at the end of each task), the published
best settings (DER best-args, rot-mnist, GEM: lr 0.01, margin γ 0.5; ../shared/PROTOCOLS.md
§A, verified).

    python -m sequax.launch.train --config=configs/rmnist_gem.py --workdir=runs/rmnist_gem
    python -m sequax.launch.train --config=configs/rmnist_gem.py:local \
        --workdir=/tmp/rmnist_gem  # short CPU run

Expected: DER Table 2, GEM-500: domain-IL ACC 81.15 %. Not yet run on full data here (20
tasks of 60,000 images: too long for the shared 2-core machine); `:local` runs.
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_config("rotated", "gem", lr=0.01, capacity=500, num_tasks=20, gamma=0.5)
    return common.finish(config, arg)
