"""Experiment configs (ml_collections), one file per method × benchmark.

python -m sequax.launch.train --config=configs/smnist_er.py --workdir=runs/er
python -m sequax.launch.train --config=configs/pmnist_ewc.py:local --workdir=/tmp/x
python -m sequax.launch.train --config=configs/quickstart.py --config.algorithm.capacity=500 ...
"""
