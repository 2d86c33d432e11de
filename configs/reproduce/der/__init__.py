"""The DER paper's MNIST table (Buzzega et al., NeurIPS 2020, Table 2): see `table.py`."""
