"""absl entry points: `train` (one experiment) and `bench` (throughput against PyTorch)."""
