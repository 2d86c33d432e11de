"""Split MNIST (DER protocol): 5 tasks × 2 classes, class-IL with task-IL read from the same run,
batch 10, 1 epoch per task, with a torch CNN.

A torch `nn.Module` trained by sequax through the torch bridge (docs/torch_bridge.md): the
`SmallCNN` of `sequax.engine.torch_bridge.zoo` (conv 3x3 16 + BatchNorm + ReLU + max-pool,
conv 3x3 32 + BatchNorm + ReLU + max-pool, linear), its own torch initial weights (seed
`config.model.seed`), trained with DER++ (buffer 500, the MLP's best settings: lr 0.03,
replay batch 10, α 1.0, β 0.5; not tuned for this network).

    python -m sequax.launch.train --config=configs/smnist_torch_cnn.py \
        --workdir=runs/smnist_torch_cnn
    python -m sequax.launch.train --config=configs/smnist_torch_cnn.py:local \
        --workdir=/tmp/smnist_torch_cnn  # short CPU run
    python -m sequax.launch.train --config=configs/smnist_torch_cnn.py:local \
        --config.data.source=mnist_packaged --workdir=/tmp/smnist_torch_cnn  # no data root needed

Expected (seed 0, one run, 2-core CPU, `:local` on mnist_packaged): class-IL ACC 69.36 %,
task-IL 96.62 %; about 45 s wall (the full-data run is not measured yet). Swap the network by
pointing `config.model.factory` at your own "package.module:function" returning an
`nn.Module` (its keyword arguments in `config.model.kwargs`); docs/torch_bridge.md.
"""

import ml_collections

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_config(
        "split", "derpp", lr=0.03, capacity=500, replay_batch=10, alpha=1.0, beta=0.5
    )
    config.model = ml_collections.ConfigDict(
        dict(
            name="torch",
            # "package.module:function" -> nn.Module
            factory="sequax.engine.torch_bridge.zoo:small_cnn",
            kwargs=ml_collections.ConfigDict(dict(widths=(16, 32))),  # the factory's arguments
            classifier="",  # "": the nn.Linear that runs last; its input are the features
            reinit=False,  # True: each run's seed re-draws the weights (reset_parameters)
            input_layout="NHWC",  # sequax batches are [B, H, W, C]; torch gets NCHW
            input_shape=(28, 28, 1),  # one example, to trace the module once at build time
            seed=0,  # torch's seed while the factory builds the module
        )
    )
    return common.finish(config, arg)
