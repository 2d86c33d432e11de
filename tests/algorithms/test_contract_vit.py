"""The contract (tests/algorithms/test_contract.py) for the pretrained-model methods, on a tiny
ViT: the same checks, in a file of their own so that the test workers share the time."""

from __future__ import annotations

import pytest
from test_contract import CHECKS, ON_VIT, harness

from sequax import testing

NAMES = sorted(ON_VIT)


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", NAMES)
def test_contract(name, check):
    CHECKS[check](harness(name))


@pytest.mark.parametrize("name", NAMES)
def test_each_program_compiled_once(name):
    trial = harness(name).trial
    assert trial.compiled == dict.fromkeys(testing.harness.PROGRAMS, 1)
