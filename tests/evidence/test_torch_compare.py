"""`evidence/torch_compare.py`'s plumbing on a tiny budget (the comparison itself is a benchmark).

Every cell must be the same run but for `config.model`; the torch CNN (through the bridge)
and the flax MLP must both learn, under EWC (vmapped seeds of a conv net: the per-example
Fisher path) and DER++; the table must hold one row per cell and land between the markers.
That run is marked `long` (`pytest -m long`); test_evidence_commands.py runs the command on
one small cell in the default suite.
"""

from __future__ import annotations

import jax
import pytest

from evidence import torch_compare
from sequax.launch import bench

BUDGET = dict(
    source="mnist_packaged",
    tasks=2,
    train_per_task=200,
    test_per_task=100,
    seeds=2,
    nf=4,
    capacity=50,
    lr=0.01,
    ewc_lam=1.0,
)


@pytest.fixture
def optimised_convolutions():
    """XLA's optimisations back on (conftest turns most off): XLA:CPU's convolutions are
    about 25x slower without them, more than the compile time saved."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_cells_differ_only_in_the_model():
    for method in torch_compare.METHODS:
        configs = [
            torch_compare.cell_config(n, method, **BUDGET).to_dict() for n in torch_compare.NETWORKS
        ]
        models = [c.pop("model") for c in configs]
        assert all(c == configs[0] for c in configs[1:])
        assert len({str(m) for m in models}) == len(torch_compare.NETWORKS)
    torch_resnet = torch_compare.model_config("torch_resnet18", 4)
    assert torch_resnet.kwargs.nf == torch_compare.model_config("flax_resnet18", 4).nf == 4
    assert torch_resnet.reinit  # each seed its own initial weights, as the flax networks
    assert (
        torch_compare.model_config("flax_resnet18_from_torch", 4).init_from == "torch"
    )  # the torch draws
    with pytest.raises(ValueError, match="unknown network"):
        torch_compare.model_config("torch_mlp", 4)


@pytest.mark.long  # about 85 s on 2 cores: pytest -m long
def test_both_frameworks_learn_and_the_table_lands_between_the_markers(
    tmp_path, optimised_convolutions
):
    networks, methods = ["torch_cnn", "flax_mlp"], ["ewc", "derpp"]
    results = torch_compare.compare(networks, methods, say=lambda *a, **k: None, **BUDGET)
    assert list(results) == [(m, n) for m in methods for n in networks]
    for (method, network), cell in results.items():
        assert cell["class_il"].shape == cell["task_il"].shape == (2,)  # one value per seed
        # Task-IL chance is 50 % (2 classes per task): both frameworks must beat it clearly.
        assert cell["task_il"].min() > 70.0, (method, network, cell)
        assert cell["wall_s"] > 0
    info = dict(cpu="test cpu", cores=2, jax="0", torch="0", load=(1.0, 1.0, 1.0))
    text = torch_compare.format_table(
        results, BUDGET, command="python -m evidence.torch_compare", info=info, total_s=60.0
    )
    rows = [line for line in text.splitlines() if line.startswith(("| online EWC", "| DER++"))]
    assert [r.split(" | ")[1:3] for r in rows] == [["cnn", "torch"], ["mlp", "flax"]] * 2
    doc = tmp_path / "torch_bridge.md"
    doc.write_text("# Torch\n\nbefore\n\n<!-- compare -->\nold\n<!-- /compare -->\n\nafter\n")
    bench.write_section(str(doc), "compare", text)
    written = doc.read_text()
    assert "old" not in written and written.count("| DER++ |") == 2
    assert written.startswith("# Torch\n\nbefore") and written.rstrip().endswith("after")
