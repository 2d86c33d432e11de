"""The torch bridge against torch eager: forward, gradients, BatchNorm, dropout, training,
write-back.

Layer references run in float64 torch (a `.double()` copy of the module): the exact answer.
The training reference is a plain float32 torch loop with oneDNN off
(`torch.backends.mkldnn.enabled = False`): torch's default oneDNN BatchNorm computes
float32 batch statistics with errors up to 3e-4 on MNIST batches (inputs whose mean is
large against their spread), which 20 SGD steps grow to a 4 % gap from float64 torch; its
native kernels, like the bridge, stay within 2e-6 of float64 (docs/torch_bridge.md).
Errors are max |ours - torch| / max |torch| per tensor.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from torch import nn

from sequax import algorithms
from sequax.configs import smnist_torch_cnn
from sequax.core.state import create_state
from sequax.core.task_data import task_arrays
from sequax.data import load_source
from sequax.engine import loop
from sequax.engine.build import ConfigError, build_model, build_scenario
from sequax.engine.step import make_train_step
from sequax.engine.torch_bridge import TorchBridgeError, from_torch, to_state_dict, write_back, zoo

torch.set_num_threads(1)  # a shared 2-core machine


@pytest.fixture
def optimised_convolutions():
    """XLA's optimisations back on (conftest turns most off for compile time): without them
    XLA:CPU runs the CNN's convolutions about 25x slower, which costs more than it saves
    over a whole `loop.run`."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def rel_error(ours, theirs) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def nchw64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x)).permute(0, 3, 1, 2).double()


class LayerZoo(nn.Module):
    """Every layer kind the docs list as known to work, in one network (16x16x3 inputs). No
    bias before a BatchNorm: its gradient is exactly 0 in theory, rounding noise in practice."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.block = zoo.BasicBlock(8, 8)  # residual, identity shortcut
        self.down = zoo.BasicBlock(8, 12, stride=2)  # residual, 1x1-conv + BN shortcut
        self.pool = nn.Sequential(
            nn.MaxPool2d(2), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.head = nn.Sequential(
            nn.Linear(12, 32),
            nn.LayerNorm(32),
            nn.GELU(),
            nn.Linear(32, 32, bias=False),
            nn.BatchNorm1d(32, momentum=0.3),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.LeakyReLU(0.1),
            nn.Linear(32, 24),
            nn.SiLU(),
            nn.Sigmoid(),
        )
        self.classifier = nn.Linear(24, 5)

    def forward(self, x):
        return self.classifier(self.head(self.pool(self.down(self.block(self.stem(x))))))


def images(n: int, shape=(16, 16, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def torch_features(net: nn.Module, classifier: nn.Module, x: torch.Tensor):
    """(logits, the classifier's input) of a torch forward."""
    seen = []
    handle = classifier.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        logits = net(x)
    finally:
        handle.remove()
    return logits, seen[-1]


@pytest.mark.parametrize("train", [False, True])
def test_forward_matches_torch(train):
    torch.manual_seed(0)
    net = LayerZoo()
    x = images(8)
    model = from_torch(net, x)
    params, state = model.init(jax.random.PRNGKey(0), x)
    outputs, new_state = jax.jit(
        lambda p, s, x: model.apply(p, s, x, train=train, rng=jax.random.PRNGKey(1))
    )(params, state, x)
    reference = copy.deepcopy(net).double().train(train)
    with torch.no_grad():
        logits, features = torch_features(reference, reference.classifier, nchw64(x))
    assert outputs["logits"].shape == (8, 5) and outputs["features"].shape == (8, 24)
    assert rel_error(outputs["logits"], logits) < 1e-5
    assert rel_error(outputs["features"], features) < 1e-5
    expected = reference.state_dict()
    for name, value in new_state.items():  # train: updated running stats; eval: unchanged
        assert rel_error(value, expected[name]) < 1e-5, name
    assert int(new_state["stem.1.num_batches_tracked"]) == (1 if train else 0)
    assert net.training  # the module's own mode is restored


def test_gradients_match_torch():
    torch.manual_seed(1)
    net = LayerZoo()
    x, y = images(8, seed=1), np.arange(8) % 5
    model = from_torch(net, x)
    params, state = model.init(jax.random.PRNGKey(0), x)

    def loss(p):
        logits = model.apply(p, state, x, train=True, rng=jax.random.PRNGKey(0))[0]["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = jax.jit(jax.grad(loss))(params)
    reference = copy.deepcopy(net).double().train()
    nn.functional.cross_entropy(reference(nchw64(x)), torch.from_numpy(y)).backward()
    assert set(grads) == {name for name, _ in reference.named_parameters()}
    for name, p in reference.named_parameters():
        assert rel_error(grads[name], p.grad) < 1e-4, name


def test_batchnorm_buffers_after_k_steps_then_eval():
    """Unbiased running variance, momentum (0.1 and 0.3), num_batches_tracked, K forwards."""
    torch.manual_seed(2)
    net = LayerZoo()
    model = from_torch(net, images(2))
    params, state = model.init(jax.random.PRNGKey(0), images(2))
    forward = jax.jit(
        lambda s, x: model.apply(params, s, x, train=True, rng=jax.random.PRNGKey(0))[1]
    )
    reference = copy.deepcopy(net).double().train()
    for k in range(5):
        x = images(6, seed=10 + k) * (1 + k)  # batch statistics that change from step to step
        state = forward(state, x)
        with torch.no_grad():
            reference(nchw64(x))
    expected = reference.state_dict()
    assert int(state["head.4.num_batches_tracked"]) == 5
    for name in state:
        assert rel_error(state[name], expected[name]) < 1e-5, name
    x = images(4, seed=99)
    logits = model.apply(params, state, x, train=False)[0]["logits"]
    with torch.no_grad():
        assert rel_error(logits, reference.eval()(nchw64(x))) < 1e-5


def test_dropout_draws_a_fresh_mask_per_key_under_jit():
    p = 0.3
    net = nn.Sequential(nn.Dropout(p), nn.Linear(1000, 2))
    x = np.ones((64, 1000), np.float32)
    model = from_torch(net, x)
    params, state = model.init(jax.random.PRNGKey(0), x)
    dropped = jax.jit(lambda key: model.apply(params, state, x, train=True, rng=key)[0]["features"])
    a, b, a_again = (np.asarray(dropped(jax.random.PRNGKey(k))) for k in (1, 2, 1))
    np.testing.assert_allclose(
        np.unique(a), [0.0, 1 / (1 - p)], rtol=1e-6
    )  # inverted dropout's scale
    assert abs((a > 0).mean() - (1 - p)) < 0.01  # keep rate; 64,000 draws: std 0.0018
    assert np.array_equal(a, a_again) and 0.35 < ((a > 0) != (b > 0)).mean() < 0.49  # ~2p(1-p)
    runs = jax.vmap(dropped)(jax.random.split(jax.random.PRNGKey(3), 2))  # vmapped runs differ
    assert not np.array_equal(runs[0], runs[1])
    assert np.array_equal(
        model.apply(params, state, x, train=False)[0]["features"], x
    )  # eval: identity
    with pytest.raises(TorchBridgeError, match="draws random numbers"):
        model.apply(params, state, x, train=True)


def test_init_keeps_torch_weights_and_reinit_draws_from_the_key():
    torch.manual_seed(3)
    net = zoo.small_cnn(widths=(4, 8))
    x = np.zeros((2, 28, 28, 1), np.float32)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    model = from_torch(net, x)
    net.train()(torch.rand(4, 1, 28, 28))  # torch updates the module's buffers in place ...
    same, state = jax.jit(jax.vmap(model.init, (0, None)))(keys, x)
    np.testing.assert_array_equal(
        state["features.1.running_mean"], 0.0
    )  # ... init's copies keep theirs
    for name, p in net.named_parameters():
        np.testing.assert_array_equal(same[name][0], p.detach().numpy())
        np.testing.assert_array_equal(same[name][1], p.detach().numpy())
    params, state = jax.jit(jax.vmap(from_torch(net, x, reinit=True).init, (0, None)))(keys, x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, same)
    weight = np.asarray(params["classifier.weight"])  # torch's default: U(-1/sqrt(fan_in), ..)
    assert not np.allclose(weight[0], weight[1]) and np.abs(weight).max() <= 1 / np.sqrt(
        weight.shape[-1]
    )
    np.testing.assert_array_equal(params["features.1.weight"], np.ones((2, 4)))  # BatchNorm: ones
    np.testing.assert_array_equal(state["features.1.running_var"], np.ones((2, 4)))


def _torch_loop(net, batches, lr, penalty=None):
    """Plain float32 SGD in torch, oneDNN off (see the module docstring)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    enabled, torch.backends.mkldnn.enabled = torch.backends.mkldnn.enabled, False
    try:
        for x, y in batches:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(
                net(torch.from_numpy(x).permute(0, 3, 1, 2)), torch.from_numpy(y).long()
            )
            if penalty is not None:
                loss = loss + penalty(net)
            loss.backward()
            optimizer.step()
    finally:
        torch.backends.mkldnn.enabled = enabled


def _max_error(state, net) -> float:
    expected = net.state_dict()
    return max(rel_error(v, expected[k]) for k, v in {**state.params, **state.model_state}.items())


def test_sequax_training_matches_a_torch_loop_naive_then_ewc():
    """20 SGD steps of naive fine-tuning, then 20 with EWC (our Fisher fed to both)."""
    steps, batch, lr, lam = 20, 16, 0.05, 10.0
    source = load_source("mnist_packaged")
    index = np.random.default_rng(0).permutation(len(source.train_y))[: 2 * steps * batch]
    x_all, y_all = source.train_x[index], source.train_y[index]
    batches = [
        (
            x_all[k * batch : (k + 1) * batch].astype(np.float32) / 255,
            y_all[k * batch : (k + 1) * batch],
        )
        for k in range(2 * steps)
    ]
    torch.manual_seed(4)
    net = zoo.small_cnn(widths=(4, 8))
    reference = copy.deepcopy(net)
    model = from_torch(net, batches[0][0])

    def train(state, algorithm, part):
        step = jax.jit(make_train_step(model, algorithm, optax.sgd(lr)))
        for x, y in part:
            state, metrics = step(
                state, {"x": x, "y": y.astype(np.int32), "task": np.zeros(batch, np.int32)}
            )
        return state, metrics

    naive, ewc = algorithms.make("naive"), algorithms.make("ewc", lam=lam)
    example = {
        "x": batches[0][0],
        "y": batches[0][1].astype(np.int32),
        "task": np.zeros(batch, np.int32),
    }
    state, _ = train(create_state(model, naive, optax.sgd(lr), example, 0), naive, batches[:steps])
    _torch_loop(reference, batches[:steps], lr)
    assert _max_error(state, reference) < 1e-4

    # EWC: the Fisher of the first 320 examples (our per-example estimate, computed once).
    state = create_state(model, ewc, optax.sgd(lr), example, 0)._replace(
        params=state.params, model_state=state.model_state
    )
    data = task_arrays(
        x_all[: steps * batch],
        y_all[: steps * batch],
        np.zeros(steps * batch, np.int32),
        steps * batch,
    )
    state = state._replace(
        algo=jax.jit(lambda s, d: ewc.end_task(s, d, jax.random.PRNGKey(0), model))(state, data)
    )
    fisher = {k: torch.from_numpy(np.array(v)) for k, v in state.algo.importance.items()}
    anchor = {k: torch.from_numpy(np.array(v)) for k, v in state.algo.anchor.items()}
    without_penalty = copy.deepcopy(reference)
    state, metrics = train(state, ewc, batches[steps:])

    def penalty(net):  # EWC's (lam / 2) * sum F (theta - theta*)^2, written out in torch
        return (
            0.5
            * lam
            * sum((fisher[k] * (p - anchor[k]) ** 2).sum() for k, p in net.named_parameters())
        )

    _torch_loop(reference, batches[steps:], lr, penalty)
    assert _max_error(state, reference) < 1e-4
    _torch_loop(
        without_penalty, batches[steps:], lr
    )  # the penalty changed the result, far beyond 1e-4
    assert float(metrics["penalty"]) > 0 and _max_error(state, without_penalty) > 1e-2


def test_written_back_module_scores_the_accuracy_row_in_torch(tmp_path, optimised_convolutions):
    config = smnist_torch_cnn.get_config("local")
    config.data.source = "mnist_packaged"
    config.data.train_per_task, config.data.test_per_task = 100, 50
    config.algorithm = type(config.algorithm)(dict(name="naive"))
    config.model.kwargs.widths = (4, 8)
    config.eval.batch_size = 50  # the test sets' size: no padded rows to score
    result = loop.run(config, tmp_path, verbose=False)

    torch.manual_seed(config.model.seed)
    net = zoo.small_cnn(widths=(4, 8))
    untouched = copy.deepcopy(net.state_dict())
    state_dict = to_state_dict(net, result.state.params, result.state.model_state)
    assert all(
        torch.equal(v, net.state_dict()[k]) for k, v in untouched.items()
    )  # a copy was written
    write_back(net, result.state.params, result.state.model_state)
    assert state_dict["features.1.num_batches_tracked"].dtype == torch.int64
    assert int(net.features[1].num_batches_tracked) == int(result.state.step) == 5 * 100 // 10

    scenario = build_scenario(config.data)
    seen = scenario.task_classes.any(axis=0)
    net.eval()
    for j in range(scenario.num_tasks):
        x, y = scenario.test(j)
        with torch.no_grad():
            logits = net(torch.from_numpy(x.astype(np.float32) / 255).permute(0, 3, 1, 2)).numpy()
        class_il = np.mean(np.where(seen, logits, -np.inf).argmax(1) == y)
        task_il = np.mean(np.where(scenario.task_classes[j], logits, -np.inf).argmax(1) == y)
        assert (
            abs(class_il - result.class_il[-1, j]) < 1e-6
            and abs(task_il - result.task_il[-1, j]) < 1e-6
        )


class MaxPooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveMaxPool2d(2)
        )
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class HostConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) * torch.tensor([1.0, 2.0, 3.0])  # a CPU tensor built inside forward


def test_unsupported_op_is_one_line_naming_op_and_module_path():
    with pytest.raises(
        TorchBridgeError,
        match=r"torch op aten::adaptive_max_pool2d used by features\.3 "
        r"\(AdaptiveMaxPool2d\) is not supported",
    ) as caught:
        from_torch(MaxPooled(), np.zeros((2, 8, 8, 1), np.float32))
    assert "\n" not in str(caught.value)
    with pytest.raises(
        TorchBridgeError, match=r"forward of the root module \(HostConstant\).*new_tensor"
    ):
        from_torch(HostConstant(), np.zeros((2, 4), np.float32))
    with pytest.raises(TorchBridgeError, match="momentum=None"):
        from_torch(
            nn.Sequential(nn.BatchNorm1d(4, momentum=None), nn.Linear(4, 2)), np.zeros((2, 4))
        )
    with pytest.raises(TorchBridgeError, match="returned tuple"):
        from_torch(nn.LSTM(4, 3, batch_first=True), np.zeros((2, 5, 4)))
    with pytest.raises(TorchBridgeError, match="7 classes"):
        from_torch(nn.Linear(4, 3), np.zeros((2, 4)), num_classes=7)
    model = from_torch(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), np.zeros((2, 4, 4, 1)))
    params, state = model.init(jax.random.PRNGKey(0), None)
    with pytest.raises(
        TorchBridgeError, match=r"1 \(Linear\)"
    ):  # another input shape than the example's
        model.apply(params, state, np.zeros((2, 5, 5, 1), np.float32), train=False)


def test_config_builds_a_torch_model_or_says_why_not():
    config = smnist_torch_cnn.get_config("local")
    assert build_model(config.model, 10).num_classes == 10
    for key, value, message in [
        ("factory", "no_such_package.models:net", "cannot import 'no_such_package.models'"),
        ("factory", "sequax.engine.torch_bridge.zoo", "'package.module:function'"),
        ("factory", "sequax.engine.torch_bridge.zoo:nothing", "has no callable 'nothing'"),
        ("factory", "builtins:dict", "returned dict, not a torch.nn.Module"),
        ("kwargs", {"depth": 3}, "rejects them"),
    ]:
        bad = copy.deepcopy(config.model)
        bad[key] = value
        with pytest.raises(ConfigError, match=message) as caught:
            build_model(bad, 10)
        assert "\n" not in str(caught.value)
    with pytest.raises(
        ConfigError, match="returns 10 logits per example but the stream has 4 classes"
    ):
        build_model(config.model, 4)


def test_reduced_resnet18_matches_torch_in_train_and_eval():
    torch.manual_seed(5)
    net = zoo.resnet18_reduced(num_classes=10)
    assert sum(p.numel() for p in net.parameters()) == 1_094_750  # nf=20, 10 classes (GEM: 1.09 M)
    x = images(4, (32, 32, 3), seed=5)
    model = from_torch(net, x)
    params, state = model.init(jax.random.PRNGKey(0), x)
    apply = jax.jit(
        lambda p, s, x, train: model.apply(p, s, x, train=train, rng=None), static_argnums=3
    )
    reference = copy.deepcopy(net).double()
    for train in (True, False):  # train first: eval then uses the updated running statistics
        outputs, new_state = apply(params, state, x, train)
        with torch.no_grad():
            logits, features = torch_features(reference.train(train), reference.linear, nchw64(x))
        assert outputs["features"].shape == (4, 160)
        assert (
            rel_error(outputs["logits"], logits) < 1e-5
            and rel_error(outputs["features"], features) < 1e-5
        )
        expected = reference.state_dict()
        assert max(rel_error(v, expected[k]) for k, v in new_state.items()) < 1e-5
        state = new_state
