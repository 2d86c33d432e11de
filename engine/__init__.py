"""The compiled continual-learning core: state, step, loop, evaluation, metrics, models."""
