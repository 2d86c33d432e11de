"""The GPU ViT suite (`benchmarks/vit_gpu.py`): its configs and synthetic CIFAR-100 stream,
the two PyTorch loops on `--tiny`'s stream (on the CPU), the device-side pieces of the torch
loops against their references, and the section rendered from made-up results. The sequax
cells (a ViT compile each, about 15 s here) are not run: `python -m benchmarks.vit_gpu --tiny
--results=FILE` runs every cell end to end."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import vit_gpu

FULL = vit_gpu.Setup()


@pytest.fixture(scope="module")
def torch_one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steady on a shared 2-core machine
    yield torch
    torch.set_num_threads(threads)


def test_the_configs_are_the_issues_vit_b16_on_cifar100_sized_data():
    from sequax.engine.build import build_algorithm, build_model

    l2p = vit_gpu.make_config("l2p", FULL)
    assert l2p.data.source == "benchmarks.vit_gpu:synthetic_cifar100"
    assert l2p.data.num_tasks == 10 and l2p.data.options.classes_per_task == 10
    assert l2p.model.to_dict() == dict(name="vit", width=768, depth=12, num_heads=12,
                                       mlp_dim=3072, patch_size=16, resize=224,
                                       mean=(0.5,) * 3, std=(0.5,) * 3)  # fmt: skip
    assert l2p.training.batch_size == 64 and l2p.training.epochs == 3
    assert l2p.eval.batch_size == l2p.data.test_per_task == 100  # one batch per test set
    assert l2p.algorithm.cache_examples == l2p.data.train_per_task == 384  # the largest task
    assert vit_gpu.make_config("l2p", FULL, cache=False).algorithm.cache_examples == 0
    assert not l2p.checkpoint.enabled
    slca = vit_gpu.make_config("slca", FULL)
    assert slca.optimizer.name == "momentum" and slca.optimizer.lr == 0.01
    assert build_algorithm(slca.algorithm).backbone_lr_factor == 0.01  # 0.0001 for the ViT
    model = build_model(l2p.model, 100)  # ViT-B/16, not initialised
    assert (model.module.width, model.module.depth, model.module.resize) == (768, 12, 224)
    for method in ("l2p", "slca"):
        build_algorithm(vit_gpu.make_config(method, vit_gpu.TINY).algorithm)


def test_the_stream_is_cifar100_sized_and_formatted():
    from sequax.engine.build import build_scenario

    source = vit_gpu.tiny_cifar100()
    assert source.train_x.shape == (800, 32, 32, 3) and source.train_x.dtype == np.uint8
    assert source.num_classes == 100 and np.bincount(source.train_y).tolist() == [8] * 100
    scenario = build_scenario(vit_gpu.make_config("l2p", vit_gpu.TINY).data)
    assert scenario.num_tasks == 2 and np.asarray(scenario.task_classes).sum(1).tolist() == [4, 4]
    x, y = scenario.train(1)
    assert x.shape == (16, 32, 32, 3) and set(y.tolist()) <= {4, 5, 6, 7}


def test_the_child_flags_give_the_same_setup():
    for setup in (FULL, vit_gpu.TINY, vit_gpu.Setup(train_per_task=128, precision="highest")):
        flags = dict(f.removeprefix("--").partition("=")[::2] for f in vit_gpu.setup_flags(setup))
        assert ("tiny" in flags) == setup.tiny
        assert all(flags[f"vit_{f}"] == str(getattr(setup, f)) for f in vit_gpu.FIELDS)


def test_the_torch_resize_is_jax_image_resize(torch_one_thread):
    import jax
    import torch

    x = np.random.default_rng(0).uniform(size=(2, 5, 5, 3)).astype(np.float32)
    parts = vit_gpu.torch_parts()
    vit = parts.DeviceViT(resize=16, patch_size=8, width=8, depth=1, num_heads=2, mlp_dim=8,
                          in_chans=3, mean=(0.2, 0.5, 0.7), std=(0.3, 0.5, 0.9))  # fmt: skip
    captured = {}
    vit.patch_embed.proj.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    vit(torch.from_numpy(x))
    expected = jax.image.resize(x, (2, 16, 16, 3), "bilinear")
    expected = (np.asarray(expected) - np.array([0.2, 0.5, 0.7])) / np.array([0.3, 0.5, 0.9])
    got = captured["x"].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_device_batchwise_selection_is_torch_prompts(torch_one_thread):
    import torch

    from benchmarks.torch_prompt import batchwise

    parts = vit_gpu.torch_parts()
    for seed in range(5):
        idx = torch.topk(torch.randn(16, 10, generator=torch.Generator().manual_seed(seed)), 3)[1]
        idx = idx % (4 + seed)  # few distinct prompts: the padding branch
        np.testing.assert_array_equal(parts.batchwise(idx, 10, 3), batchwise(idx, 10, 3))


@pytest.mark.parametrize("method", ["l2p", "slca"])
def test_the_torch_loops_run_on_the_tiny_stream(method, torch_one_thread):
    result = vit_gpu.run_torch_cell(method, vit_gpu.TINY)
    assert result["train_steps"] == 2 * 2 and result["train_samples"] == 2 * 16  # 2 tasks x 2
    assert result["time_to_result"] > result["train"] + result["end_task"] > 0
    assert result["compile"] > 0 and result["device"] == "cpu"
    matrix = np.asarray(result["matrix"])
    assert matrix.shape == (2, 2) and matrix[0, 1] == 0.0  # class-IL: task 2 unseen after task 1
    assert (result["end_task"] > 0) == (method == "slca")  # statistics, alignment after task 2


def cell(steps_per_s, time_to_result, peak, end_task=1.0, train=10.0):
    return dict(steps_per_s=steps_per_s, samples_per_s=64 * steps_per_s,
                work_samples_per_s=64 * steps_per_s * train / (train + end_task), train=train,
                end_task=end_task, compile=20.0, time_to_result=time_to_result,
                device_peak_bytes=peak, acc=12.5)  # fmt: skip


def test_the_section_from_made_up_results(tmp_path):
    from sequax.launch import bench

    info = dict(cpu="Xeon", cores=16, ram_gib=126.0, python="3.12.3", jax="0.11.2",
                jaxlib="0.11.2", torch="2.11.0", gpu="NVIDIA H100 80GB HBM3")  # fmt: skip
    setup = dict(vit_gpu.dataclasses.asdict(FULL), num_tasks=10, classes_per_task=10,
                 vit=FULL.vit())  # fmt: skip
    cells = dict(sequax_l2p=cell(40.0, 60.0, 12 * 2**30), sequax_l2p_nocache=cell(25.0, 62.0, None),
                 sequax_slca=cell(20.0, 70.0, 20 * 2**30, end_task=4.0),
                 torch_l2p=cell(20.0, 30.0, 6 * 2**30, end_task=0.0), torch_slca=None)  # fmt: skip
    command = "python -m benchmarks.vit_gpu --results=r.json"
    results = dict(info=info, setup=setup, cells=cells, date="2026-12-08 10:00 UTC",
                   command=command, seconds=300.0)  # fmt: skip
    text = vit_gpu.report(results)
    assert "python -m benchmarks.vit_gpu --results=r.json" in text and "NVIDIA H100" in text
    assert "5.0 min" in text and "TF32" in text and "width 768" in text
    lines = [line for line in text.splitlines() if line.startswith(("| L2P", "| SLCA"))]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[3:-1] for line in lines}
    cached = [c.strip() for c in rows[("L2P", "sequax (query cache)")]]
    assert cached[:2] == ["40.00", "2.00×"] and cached[-2:] == ["12,288", "12.50"]
    assert cached[9] == "0.50×"  # torch's time to result over this one
    assert [c.strip() for c in rows[("L2P", "sequax, no cache")]][-2] == "–"  # no peak
    assert rows[("SLCA", "torch")][0].strip() == "failed"
    assert [c.strip() for c in rows[("SLCA", "sequax")]][1] == "–"  # no torch cell to divide by
    assert "training steps 1.60× faster with the cache" in text
    out = tmp_path / "benchmarks.md"
    bench.publish("vit_gpu", text, [out])
    written = out.read_text()
    assert "<!-- vit_gpu -->" in written and "<!-- /vit_gpu -->" in written
