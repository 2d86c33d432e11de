"""Shared test setup: fast CPU compiles, the repository paths, and the real-MNIST marker.

XLA's optimisation passes dominate these tests' run time (tiny models, a few hundred steps),
so they are switched off: `jax_disable_most_optimizations` cuts compile time by about a
third and changes no result a test relies on (every comparison is within one configuration).
"""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

jax.config.update("jax_disable_most_optimizations", True)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

needs_shared_mnist = pytest.mark.skipif(
    not (SHARED_DATA / "MNIST" / "raw").is_dir(),
    reason=f"real MNIST files not found under {SHARED_DATA} (the configs' default data root)",
)
