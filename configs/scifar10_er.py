"""Split CIFAR-10 (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same
run, ResNet-18 (nf 64), batch 32, 50 epochs per task.

Experience replay, reservoir buffer of 500, mammoth's best settings (utils/best_args.py,
seq-cifar10, buffer 500: lr 0.1, replay batch 32). Random crop (padding 4) and horizontal
flip on every training and replayed example, inputs normalised with CIFAR-10's channel means
and stds, as mammoth's seq-cifar10.

    python -m sequax.launch.train --config=configs/scifar10_er.py --config.data.root=/data \
        --workdir=runs/scifar10_er
    python -m sequax.launch.train --config=configs/scifar10_er.py:local --config.data.root=/data \
        --workdir=/tmp/scifar10_er  # 1 epoch, nf 20

Needs <root>/cifar-10-batches-py/ (https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz,
extracted). The files are not available offline where sequax is developed, so this config
has not been run on them: tests/configs/test_image_configs.py builds it and trains its
`:local` variant on small files generated in the official format.

Published (DER Table 2, ER-500, recalled, to verify): class-IL 57.74 %, task-IL 93.61 %. Not
yet reproduced here.
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_image_config("cifar10", "er", lr=0.1, capacity=500, replay_batch=32)
    return common.finish(config, arg)
