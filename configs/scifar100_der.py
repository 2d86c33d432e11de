"""Split CIFAR-100 (DER protocol as mammoth's seq-cifar100): 10 tasks × 10 classes, class-IL with
task-IL read from the same run, ResNet-18 (nf 64), batch 32, 50 epochs per task.

Dark Experience Replay, reservoir buffer of 500, mammoth's best settings (utils/best_args.py
at 0d727a7, seq-cifar100, buffer 500: lr 0.03, α 0.3, no momentum or weight decay; replay
batch = batch = 32, the dataset's defaults). Random crop (padding 4) and horizontal flip on
every training and replayed example, inputs normalised with CIFAR-100's channel means and stds.

One departure: mammoth's seq-cifar100 decays the learning rate by 10x after epochs 35 and 45
of every task (MultiStepLR); sequax's optimiser has no epoch schedule yet, so the rate stays
0.03 throughout.

    python -m sequax.launch.train --config=configs/scifar100_der.py --config.data.root=/data \
        --workdir=runs/scifar100_der
    python -m sequax.launch.train --config=configs/scifar100_der.py:local --config.data.root=/data \
        --workdir=/tmp/scifar100_der  # 1 epoch, nf 20

Needs <root>/cifar-100-python/ (https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz,
extracted). The files are not available offline where sequax is developed, so this config
has not been run on them: tests/configs/test_image_configs.py builds it on small files
generated in the official format.

Published: Split CIFAR-100 is not in the DER paper; X-DER (Boschini et al., TPAMI 2022)
reports DER on this 10-task protocol (look the value up before using it as a target). Not
yet reproduced here.
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_image_config(
        "cifar100", "der", lr=0.03, capacity=500, replay_batch=32, alpha=0.3, num_classes=100
    )
    return common.finish(config, arg)
