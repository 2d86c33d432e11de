"""General continual learning on MNIST-360 (Buzzega et al. 2020, mammoth's gcl setting).

27 segments of two rotating digits, read once in the stream's order (`data/mnist360.py`),
batch 16, the method never told where segments end (`training.task_free`), every task's test
set also evaluated every 200 steps (the anytime curve). DER++ with a 500-example buffer,
mammoth's MNISTMLP (784-100-100-9). Any task-free method: `--config.algorithm.name=gss`.

    python -m sequax.launch.train --config=configs/mnist360_derpp.py --workdir=runs/mnist360
"""

import ml_collections

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_config("split", "derpp", 0.2, capacity=500, replay_batch=16,
                               num_classes=9, alpha=0.5, beta=1.0)  # fmt: skip
    config.data.scenario = "mnist_360"
    config.data.num_tasks = 27
    config.data.options = ml_collections.ConfigDict(dict(batch_size=16))
    config.training.batch_size = 16
    config.training.task_free = True
    config.eval.every_steps = 200
    return common.finish(config, arg)
