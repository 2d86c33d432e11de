"""The core of sequax: the protocol a method implements, the state pytree, models and batches."""
