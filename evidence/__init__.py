"""One-off evidence programs behind the reproduction notes and docs (not installed).

    python -m evidence.torch_der_check       # mammoth's 2020 loop in PyTorch, on our DER cells
    python -m evidence.torch_mirzadeh_check  # Stable SGD's reference loop, on our Mirzadeh cells
    python -m evidence.torch_compare         # torch backbones against the flax ones
    python -m evidence.torch_paired          # paired seeds of torch_compare's ResNet-18 cell

Run from the repository root; see evidence/README.md. `refactor_baseline.py` and
`cell_config.py` are scripts and config files, run by path.
"""
