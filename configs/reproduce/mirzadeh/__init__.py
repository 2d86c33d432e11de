"""The Mirzadeh-protocol table (Stable SGD, NeurIPS 2020; MC-SGD, ICLR 2021) with La-MAML, HAT and
KCL: see `table.py`."""
