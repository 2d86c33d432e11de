"""`sequax.testing`: the contract every method passes, as functions to call on your own.

    import sequax.testing
    report = sequax.testing.check_algorithm(MyER(capacity=16))   # raises ContractError
    print(report)  # MyER holds the contract (8 properties); state of 15 arrays, 164.1 kB ...

Each property is also a function of its own (`check_protocol`, `check_jits`,
`check_state_stable`, `check_no_retrace`, `check_deterministic`,
`check_checkpoint_round_trip`), and each failure is a `ContractError` (an `AssertionError`)
whose one-line message names the method and the broken property:

    MyER breaks 'state structure stable across update': algo.buffer.items changed shape
    (16, 784) -> (32, 784)

The checks run the engine's own programs (`Harness`) on a two-task stream of random images
built in memory (`synthetic_stream`); `tests/algorithms/test_contract.py` runs them over every
built-in method.
"""

from sequax.testing.contract import (
    ContractReport,
    check_algorithm,
    check_checkpoint_round_trip,
    check_deterministic,
    check_jits,
    check_no_retrace,
    check_protocol,
    check_state_stable,
)
from sequax.testing.harness import Harness
from sequax.testing.properties import PROPERTIES, ContractError
from sequax.testing.synthetic import SyntheticStream, synthetic_stream

__all__ = [
    "PROPERTIES",
    "ContractError",
    "ContractReport",
    "Harness",
    "SyntheticStream",
    "check_algorithm",
    "check_checkpoint_round_trip",
    "check_deterministic",
    "check_jits",
    "check_no_retrace",
    "check_protocol",
    "check_state_stable",
    "synthetic_stream",
]
