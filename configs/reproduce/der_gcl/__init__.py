"""The DER paper's general-continual-learning table (Buzzega et al., NeurIPS 2020, MNIST-360):
see `table.py`."""
