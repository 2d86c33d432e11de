"""`sequax.testing`: the contract every method passes, as functions to call on your own."""
