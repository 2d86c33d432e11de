"""The MIR paper's MNIST rows (Aljundi et al., NeurIPS 2019, ER and ER-MIR on Split and Permuted
MNIST): see `table.py`."""
