"""Split TinyImageNet (DER protocol): 10 tasks × 20 classes, class-IL with task-IL read from the
same run, ResNet-18 (nf 64), batch 32, 100 epochs per task.

DER++, reservoir buffer of 500, mammoth's best settings (utils/best_args.py, seq-tinyimg,
buffer 500: lr 0.03, replay batch 32, α 0.2, β 0.5). Random crop (padding 4) and horizontal
flip on every training and replayed example, inputs normalised with TinyImageNet's channel
means and stds, as mammoth's seq-tinyimg. The labelled validation set is the test set.

    python -m sequax.launch.train --config=configs/stinyimg_derpp.py --config.data.root=/data \
        --workdir=runs/stinyimg_derpp
    python -m sequax.launch.train --config=configs/stinyimg_derpp.py:local \
        --config.data.root=/data --workdir=/tmp/stinyimg_derpp  # 1 epoch, nf 20

Needs <root>/tiny-imagenet-200/ (http://cs231n.stanford.edu/tiny-imagenet-200.zip,
unzipped); the first load decodes the 110,000 JPEGs (35-55 s on 2 cores) and caches them in
<root>/tiny-imagenet-200/sequax_decoded.npz (sequax.data.tiny_imagenet). The files are not
available offline where sequax is developed, so this config has not been run on them:
tests/configs/test_image_configs.py builds it on small files generated in the official format.

Published (DER Table 2, DER++-500, recalled, to verify): class-IL 19.38 %, task-IL 51.91 %.
Not yet reproduced here.
"""

from sequax.configs import common


def get_config(arg: str | None = None):
    config = common.der_image_config(
        "tiny_imagenet",
        "derpp",
        lr=0.03,
        capacity=500,
        replay_batch=32,
        alpha=0.2,
        beta=0.5,
        num_classes=200,
    )
    return common.finish(config, arg)
