"""EWC's end of task against one epoch of training, on convolutional networks (issue "Time to
result", item 6: the per-example Fisher costs at most about one epoch of training).

    python -m benchmarks.end_task                        # every model, 1,000 examples per task
    python -m benchmarks.end_task --models=ds_cnn_torch --examples=300

Each model trains online EWC (empirical Fisher over the whole task, chunks of 128) on two
tasks of Split MNIST (real MNIST, batch 32, one epoch), in one `loop.run` each; the ratio is
the run's `end_task` seconds over its `train` seconds (one epoch per task: the same examples),
compile excluded from both (`engine.clock`). `--modes`: "auto" (sequax's choice: on CPU the
task's chunks run from the host, `engine.host_loops`, each chunk's per-example gradients one
vmap, or one at a time for grouped convolutions), "sequential" (one at a time in a scan, in
every chunk) and "vmap" (one vmap per chunk); `algorithms.fisher`. The modes patch sequax in
this process, so the program cache is off here. Models: the
reduced ResNet-18 (flax; nf 20 on 28x28x1), a depthwise-separable CNN in flax
(`benchmarks/conv_models.py`) and the same network in torch through the bridge
(`sequax.engine.torch_bridge.zoo:ds_cnn`). Prints a table; writes nothing.
"""

from __future__ import annotations

import functools
import tempfile
from unittest import mock

from absl import app, flags

from sequax.algorithms import fisher
from sequax.configs import common
from sequax.engine import loop

_MODELS = flags.DEFINE_list("models", ["resnet18", "ds_cnn", "ds_cnn_torch"], "Models to time.")
_EXAMPLES = flags.DEFINE_integer("examples", 1000, "Training examples per task.")
_MODES = flags.DEFINE_list(
    "modes", ["auto"], "How per-example gradients run: auto (sequax's choice), sequential, vmap."
)


def config_for(model: str, examples: int):
    config = common.der_config("split", "ewc", 0.03, lam=10.0, gamma=1.0, online=True,
                               fisher_labels="empirical")  # fmt: skip
    config.data.num_tasks = 2
    config.data.train_per_task = examples
    config.data.test_per_task = 200
    config.training.batch_size = 32
    config.checkpoint.enabled = False
    config.model = {
        "resnet18": dict(name="resnet18"),
        "ds_cnn": dict(name="benchmarks.conv_models:ds_cnn"),
        "ds_cnn_torch": dict(
            name="torch", factory="sequax.engine.torch_bridge.zoo:ds_cnn", input_shape=(28, 28, 1)
        ),
    }[model]
    return config


def main(argv):
    del argv
    rows = []
    for model in _MODELS.value:
        for mode in _MODES.value:
            real = fisher.per_example_gradient_sum
            chosen = None if mode == "auto" else mode == "sequential"
            forced = functools.partial(real, sequential=chosen)
            with mock.patch.object(fisher, "per_example_gradient_sum", forced):
                with tempfile.TemporaryDirectory() as workdir:
                    t = loop.run(config_for(model, _EXAMPLES.value), workdir, verbose=False).timings
            rows.append((model, mode, t["train"], t["end_task"], t["compile"]))
            ratio = t["end_task"] / t["train"]
            print(f"{model} {mode}: train {t['train']:.2f}s end_task {t['end_task']:.2f}s "
                  f"({ratio:.2f}x) compile {t['compile']:.1f}s", flush=True)  # fmt: skip
    print("\n| model | per-example gradients | train s (1 epoch/task) | end_task s | ratio "
          "| compile s |")  # fmt: skip
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for model, group, train, end, compiled in rows:
        print(
            f"| {model} | {group} | {train:.2f} | {end:.2f} | {end / train:.2f}× | {compiled:.1f} |"
        )


if __name__ == "__main__":
    app.run(main)
