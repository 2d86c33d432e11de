"""AdamW with a linear warmup and a cosine decay, restarted at every task, on Split MNIST (ER).

    python examples/adamw_cosine.py
    python -m sequax.launch.train --config=configs/quickstart.py --workdir=runs/adamw \
        --config.optimizer.name=adamw --config.optimizer.lr=0.001 \
        --config.optimizer.weight_decay=0.01 --config.optimizer.schedule=warmup_cosine \
        --config.optimizer.warmup_epochs=0.2
"""

import sequax
from sequax import algorithms, data

stream = data.make_scenario("split", data.load_source("mnist_packaged"), num_tasks=5)
optimizer = {  # config.optimizer's keys: any optax optimizer by name, any schedule
    "name": "adamw", "lr": 1e-3, "weight_decay": 1e-2,
    "schedule": "warmup_cosine", "warmup_epochs": 0.2, "per_task": True,
}
sequax.train(stream, "mlp", algorithms.ER(capacity=200, replay_batch=10), optimizer,
             workdir="runs/adamw_cosine")
