"""GSS (`sequax.algorithms.gss`): the contract, the scoring and replacement math, and a float64
PyTorch transcription of mammoth's GSS (aimagelab/mammoth `models/gss.py`: `observe`,
`get_grads`; `utils/gss_buffer.py`: `Buffer.add_data`, `functional_reservoir`,
`get_grad_score`, `get_data`, `reset_fathom`), fed the same random draws.

The reference keeps its words; its randomness is replaced by the draws the JAX code made:
`np.random.choice(..., replace=False)` by the memory rows, `torch.randperm` by the walk's
order, and, per example, `np.random.choice(p=...)` by numpy's own inverse CDF on the slot
uniform (checked against numpy below) and `np.random.rand` by the acceptance uniform.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from batches import random_batch
from torch_reference import assert_gradient_is_naives, assert_mlp_grads_match, torch_mlp

from sequax import testing
from sequax.algorithms import Naive
from sequax.algorithms.gss import (
    GSS,
    GSSState,
    gradient_scores,
    gss_keys,
    last_writes,
    offer,
    offer_draws,
    replay_rows,
    select_slots,
    walk_order,
)
from sequax.core.models import mlp
from sequax.core.state import create_state

BATCH, CAPACITY, REPLAY, MEMORY, CLASSES, LR = 5, 8, 3, 4, 10, 0.1


@pytest.fixture(scope="module")
def model():
    return mlp(CLASSES, widths=(16,))


def fresh_state(algorithm, model):
    return create_state(model, algorithm, optax.sgd(LR), random_batch(0, BATCH), seed=0)


# ---------------- The contract -----------------------------------------------------------------


def test_contract_with_two_glances():
    """mammoth's batch_num = 2 (one glance: tests/algorithms/test_contract.py's "gss")."""
    algorithm = GSS(capacity=16, replay_batch=4, gss_minibatch_size=4)
    testing.check_algorithm(algorithm, glances=2)


def test_hyperparameters_are_checked():
    with pytest.raises(ValueError, match="capacity"):
        GSS(capacity=0)
    for name in ("replay_batch", "gss_minibatch_size"):
        for value in (0, 9):
            with pytest.raises(ValueError, match=name):
                GSS(**{"capacity": 8, "replay_batch": 2, "gss_minibatch_size": 2, name: value})
    GSS(capacity=8, replay_batch=8, gss_minibatch_size=1)


# ---------------- Scores, filling, replacement, the replay walk --------------------------------


def test_scores_are_cosine_similarities_plus_one():
    """A linear model at zero: p = 1/C, so ∇CE(x, y) = (1/C - e_y) ⊗ (x, 1), and cosines of
    different labels are negative. Each score is max(0, max over valid rows of cos + 1), the
    batch's with the gradient of the mean (the mean of the examples' gradients)."""
    linear = mlp(CLASSES, widths=())
    incoming, memory = random_batch(1, 3, labels=[0, 1, 2]), random_batch(2, 4, labels=[3, 4, 1, 2])
    params, model_state = linear.init(jax.random.PRNGKey(0), incoming["x"])
    params = jax.tree.map(jnp.zeros_like, params)
    valid = jnp.asarray([True, True, True, False])  # row 3 (label 2) is an empty slot
    batch_score, scores = jax.jit(gradient_scores, static_argnums=0)(
        linear, params, model_state, incoming["x"], incoming["y"], memory["x"], memory["y"], valid
    )

    def gradient(x, y):
        return np.outer(
            np.append(np.ravel(x), 1.0), np.full(CLASSES, 1 / CLASSES) - np.eye(CLASSES)[y]
        ).ravel()

    def score(g):
        rows = [gradient(x, y) for x, y, v in zip(memory["x"], memory["y"], valid) if v]
        return max(0.0, max(g @ r / np.linalg.norm(g) / np.linalg.norm(r) for r in rows) + 1)

    per_example = [gradient(x, y) for x, y in zip(incoming["x"], incoming["y"])]
    np.testing.assert_allclose(scores, [score(g) for g in per_example], rtol=1e-5)
    np.testing.assert_allclose(batch_score, score(np.mean(per_example, axis=0)), rtol=1e-5)
    # Labels 0 and 2 meet no valid row of their class: negative cosines, scores below 1.
    assert scores[0] < 1 and scores[1] > 1 and scores[2] < 1


def test_an_empty_buffer_stores_examples_in_order(model):
    params = model.init(jax.random.PRNGKey(0), random_batch(0, 1)["x"])[0]
    algo = GSS(CAPACITY, REPLAY, MEMORY).init(params, {}, random_batch(0, BATCH), None)
    first, second = random_batch(1, BATCH), random_batch(2, BATCH)
    offer_ = jax.jit(offer, static_argnums=(4, 7))
    buffer, scores = offer_(
        algo.buffer, algo.scores, first, jax.random.PRNGKey(1), model, params, {}, MEMORY
    )
    np.testing.assert_array_equal(buffer.items["x"][:BATCH], first["x"])
    np.testing.assert_array_equal(buffer.items["y"][:BATCH], first["y"])
    np.testing.assert_array_equal(scores, np.float32([0.1] * BATCH + [0] * (CAPACITY - BATCH)))
    assert int(buffer.num_seen) == BATCH
    # The next batch fills the last 3 slots, in order, with its batch score.
    key = jax.random.PRNGKey(2)
    filled, after = offer_(buffer, scores, second, key, model, params, {}, MEMORY)
    index, valid, _ = offer_draws(key, BATCH, CAPACITY, BATCH, MEMORY)
    assert bool(valid.all()) and set(np.asarray(index).tolist()) <= set(range(BATCH))
    memory = jax.tree.map(lambda b: b[index], buffer.items)
    batch_score, _ = jax.jit(gradient_scores, static_argnums=0)(
        model, params, {}, second["x"], second["y"], memory["x"], memory["y"], valid
    )
    np.testing.assert_array_equal(filled.items["x"][BATCH:], second["x"][:3])
    np.testing.assert_allclose(after[BATCH:], [float(batch_score)] * 3)
    np.testing.assert_array_equal(after[:BATCH], scores[:BATCH])
    assert int(filled.num_seen) == 2 * BATCH


def test_a_full_buffer_replaces_by_the_reference_rule():
    """Slot j drawn with probability s_j / Σ s (inverse CDF), kept unless u < s_j / (s_j + c_i)."""
    scores = jnp.asarray([1.0, 3.0, 0.0, 4.0])  # cdf 1/8, 4/8, 4/8, 8/8
    single = jnp.asarray([0.5, 2.0, 0.25, 0.6])
    uniforms = jnp.asarray(
        [
            [0.3, 0.5],  # slot 1 (1/8 <= 0.3 < 4/8); 0.5 < 3 / 3.5: replaced, score 0.5
            [0.5, 0.7],  # s = [1, .5, 0, 4]: slot 3 (0.5 skips the empty slot 2); 0.7 >= 4/6
            [0.1, 0.79],  # slot 0 (0.1 < 1/5.5); 0.79 < 1 / 1.25: replaced, score 0.25
            [0.999, 0.0],  # s = [.25, .5, 0, 4]: slot 3; 0 < 4 / 4.6: replaced, score 0.6
        ]
    )
    slots, after = select_slots(scores, jnp.int32(4), 0.5, single, uniforms)
    np.testing.assert_array_equal(slots, [1, 4, 0, 3])  # 4 (= capacity): dropped
    np.testing.assert_allclose(after, [0.25, 0.5, 0.0, 0.6])
    # A batch score of 1 or more (a batch like the buffer) keeps the buffer as it is.
    slots, after = select_slots(scores, jnp.int32(4), 1.0, single, uniforms)
    np.testing.assert_array_equal(slots, [4, 4, 4, 4])
    np.testing.assert_array_equal(after, scores)
    # Filling: the next slots in order with the batch score, then candidates: s = [2, 1, .5, .5]
    # (cdf .5, .75, .875, 1): 0.1 draws slot 0, 0.79 < 2 / 2.25; then s = [.25, 1, .5, .5]
    # (cdf 1/9, 5/9, 7/9, 1): 0.999 draws slot 3, filled by this batch, replaced again.
    slots, after = select_slots(
        jnp.asarray([2.0, 1.0, 0.0, 0.0]), jnp.int32(2), 0.5, single, uniforms
    )
    np.testing.assert_array_equal(slots, [2, 3, 0, 3])
    np.testing.assert_allclose(after, [0.25, 1.0, 0.5, 0.6])
    # Two writes to one slot: the later one stays (the scores' scan already does this).
    np.testing.assert_array_equal(last_writes(jnp.asarray([3, 1, 3, 4, 1]), 4), [4, 4, 3, 4, 1])


def test_numpys_weighted_choice_is_the_inverse_cdf():
    """The reference's `np.random.choice(n, p=p)` (legacy global generator) is
    searchsorted(cumsum(p) / sum, one uniform, "right"): what `select_slots` does."""
    p = np.asarray([0.1, 0.0, 0.35, 0.05, 0.5])
    for seed in range(50):
        drawn = np.random.RandomState(seed).choice(np.arange(5), size=1, p=p)[0]
        assert drawn == legacy_choice(p, np.random.RandomState(seed).random_sample())


def legacy_choice(p, u):
    cdf = p.cumsum()
    cdf /= cdf[-1]
    return int(cdf.searchsorted(u, side="right"))


def test_the_replay_walk_follows_get_data():
    """Step g on a batch replays what the reference's g-th `get_data(size)` call returns."""
    for filled in (0, 2, 3, 5, 8):
        order = walk_order(jax.random.PRNGKey(filled), filled, CAPACITY)
        mask = np.asarray(order)[:filled]
        assert sorted(mask.tolist()) == list(range(filled))
        fathom = 0
        for glance in range(6):
            # get_data(size, random=False), as in mammoth (with num_seen >= filled):
            choice = np.arange(fathom, min(fathom + REPLAY, CAPACITY, filled))
            choice = mask[choice]
            fathom += len(choice)
            if fathom >= CAPACITY or fathom >= filled:
                fathom = 0
            index, valid = replay_rows(order, filled, REPLAY, glance)
            np.testing.assert_array_equal(np.asarray(index)[np.asarray(valid)], choice)
            assert not np.asarray(valid)[len(choice) :].any()


def test_first_step_is_naive(model):
    """No buffer yet, nothing pending: the first batch trains alone."""
    algorithm = GSS(CAPACITY, REPLAY, MEMORY)
    state = fresh_state(algorithm, model)
    assert isinstance(state.algo, GSSState) and not bool(state.algo.has_pending)
    assert_gradient_is_naives(
        algorithm, Naive(), state, random_batch(3, BATCH), jax.random.PRNGKey(0), model
    )


# ---------------- The PyTorch reference --------------------------------------------------------


def as_torch(a, dtype=torch.float64):
    return torch.from_numpy(np.array(a)).to(dtype)


class ReferenceBuffer:
    """mammoth's `utils/gss_buffer.py` `Buffer` in float64; `draws` replaces its randomness."""

    def __init__(self, buffer_size, minibatch_size, model):
        self.buffer_size = buffer_size
        self.num_seen_examples = 0
        self.attributes = ["examples", "labels"]
        self.model = model
        self.minibatch_size = minibatch_size
        self.cache = {}
        self.events = []  # (kind, batch score, single score) per example, for the test
        self.reset_fathom(torch.arange(0))

    def reset_fathom(self, fathom_mask):  # torch.randperm(min(num_seen, size)): the JAX order
        self.fathom = 0
        self.fathom_mask = fathom_mask

    def get_grad_score(self, batch_x, batch_y, X, Y, indices):
        g = self.model.get_grads(batch_x, batch_y)
        G = []
        for x, y, idx in zip(X, Y, indices):
            if idx in self.cache:
                grd = self.cache[idx]
            else:
                grd = self.model.get_grads(x.unsqueeze(0), y.unsqueeze(0))
                self.cache[idx] = grd
            G.append(grd)
        G = torch.cat(G)
        c_score = 0
        grads_at_a_time = 5
        for it in range(int(np.ceil(G.shape[0] / grads_at_a_time))):
            tmp = (
                F.cosine_similarity(g, G[it * grads_at_a_time : (it + 1) * grads_at_a_time], dim=1)
                .max()
                .item()
                + 1
            )
            c_score = max(c_score, tmp)
        return c_score

    def functional_reservoir(self, x, y, batch_c, bigX, bigY, indices, uniforms):
        if self.num_seen_examples < self.buffer_size:
            self.events.append(("fill", batch_c, None))
            return self.num_seen_examples, batch_c
        elif batch_c < 1:
            single_c = self.get_grad_score(x.unsqueeze(0), y.unsqueeze(0), bigX, bigY, indices)
            s = self.scores.numpy()
            i = legacy_choice(s / s.sum(), uniforms[0])  # np.random.choice(arange, p=s / s.sum())
            rand = uniforms[1]  # np.random.rand(1)[0]
            if rand < s[i] / (s[i] + single_c):
                self.events.append(("replace", batch_c, single_c))
                return i, single_c
            self.events.append(("keep", batch_c, single_c))
            return -1, 0
        self.events.append(("skip", batch_c, None))
        return -1, 0

    def init_tensors(self, examples, labels):
        self.examples = torch.zeros((self.buffer_size, *examples.shape[1:]), dtype=torch.float64)
        self.labels = torch.zeros((self.buffer_size,), dtype=torch.int64)
        self.scores = torch.zeros((self.buffer_size,), dtype=torch.float64)

    def add_data(self, examples, labels, draws):
        """`draws`: (memory rows, their validity, uniforms [B, 2]) of the JAX offer."""
        if not hasattr(self, "examples"):
            self.init_tensors(examples, labels)
        rows, valid, uniforms = (np.asarray(d) for d in draws)
        if self.num_seen_examples > 0:
            bigX, bigY, indices = self.get_data(
                min(self.minibatch_size, self.num_seen_examples),
                give_index=True,
                random=rows[valid],
            )
            c = self.get_grad_score(examples, labels, bigX, bigY, indices)
        else:
            bigX, bigY, indices = None, None, None
            c = 0.1
        for i in range(examples.shape[0]):
            index, score = self.functional_reservoir(
                examples[i], labels[i], c, bigX, bigY, indices, uniforms[i]
            )
            self.num_seen_examples += 1
            if index >= 0:
                self.examples[index] = examples[i]
                self.labels[index] = labels[i]
                self.scores[index] = score
                if index in self.cache:
                    del self.cache[index]

    def drop_cache(self):
        self.cache = {}

    def get_data(self, size, give_index=False, random=None):
        """`random`: the rows `np.random.choice(filled, min(size, num_seen), replace=False)`
        drew (the JAX memory rows)."""
        if size > self.examples.shape[0]:
            size = self.examples.shape[0]
        if random is not None:
            choice = random
            assert len(choice) == min(size, self.num_seen_examples)
        else:
            choice = np.arange(
                self.fathom, min(self.fathom + size, self.examples.shape[0], self.num_seen_examples)
            )
            choice = self.fathom_mask[choice]
            self.fathom += len(choice)
            if self.fathom >= self.examples.shape[0] or self.fathom >= self.num_seen_examples:
                self.fathom = 0
        ret_tuple = (self.examples[choice], self.labels[choice])
        return ret_tuple + ((choice,) if give_index else ())

    def is_empty(self):
        return self.num_seen_examples == 0


class ReferenceGSS:
    """mammoth's `models/gss.py` `Gss` on a float64 torch network. `observe` is split where
    the test compares: `begin_observe` (its `drop_cache` and `reset_fathom`), `step` (one
    iteration of its `batch_num` loop, gradients left in `.grad`), then `buffer.add_data`."""

    def __init__(self, net, buffer_size, minibatch_size, gss_minibatch_size, lr):
        self.net = net
        self.opt = torch.optim.SGD(net.parameters(), lr=lr)
        self.loss = F.cross_entropy
        self.minibatch_size = minibatch_size
        self.buffer = ReferenceBuffer(buffer_size, gss_minibatch_size, self)

    def get_grads(self, inputs, labels):
        self.net.eval()
        self.opt.zero_grad()
        outputs = self.net(inputs)
        loss = self.loss(outputs, labels)
        loss.backward()
        grads = torch.cat([p.grad.view(-1) for p in self.net.parameters()]).clone().detach()
        self.opt.zero_grad()
        self.net.train()
        if len(grads.shape) == 1:
            grads = grads.unsqueeze(0)
        return grads

    def begin_observe(self, fathom_mask):
        self.buffer.drop_cache()
        self.buffer.reset_fathom(fathom_mask)

    def step(self, inputs, labels):
        self.opt.zero_grad()
        if not self.buffer.is_empty():
            buf_inputs, buf_labels = self.buffer.get_data(self.minibatch_size)
            tinputs = torch.cat((inputs, buf_inputs))
            tlabels = torch.cat((labels, buf_labels))
        else:
            tinputs = inputs
            tlabels = labels
        outputs = self.net(tinputs)
        loss = self.loss(outputs, tlabels)
        loss.backward()
        self.opt.step()
        return loss.item()


# Two batches of classes 0-1 fill the buffer, then classes 5-6 arrive (their gradients oppose
# the buffer's: batch scores below 1, candidates), then 0-1 again (scores above 1: skipped).
STREAM_LABELS = [
    [0, 1, 0, 1, 0],
    [1, 0, 1, 1, 0],
    [5, 6, 5, 6, 6],
    [6, 5, 5, 6, 5],
    [0, 1, 1, 0, 0],
]


@pytest.mark.parametrize("glances", [1, 2])  # mammoth's batch_num
def test_training_and_buffer_match_the_reference(model, glances):
    algorithm = GSS(CAPACITY, REPLAY, MEMORY)
    state = fresh_state(algorithm, model)
    net = torch_mlp(state.params)
    reference = ReferenceGSS(net, CAPACITY, REPLAY, MEMORY, LR)
    tx = optax.sgd(LR)
    value_and_grad = jax.jit(
        jax.value_and_grad(lambda p, s, b, r: algorithm.loss(p, s, b, r, model), has_aux=True)
    )
    update = jax.jit(algorithm.update)
    scores_of = jax.jit(gradient_scores, static_argnums=0)
    previous = None
    for t, labels in enumerate(STREAM_LABELS):
        batch = random_batch(10 + t, BATCH, labels=labels)
        for g in range(glances):
            rng = jax.random.PRNGKey(100 * t + g)
            glanced = {**batch, "glance": jnp.int32(g)} if glances > 1 else batch
            if g == 0 and previous is not None:  # the previous batch's `add_data`
                draws = offer_draws(
                    gss_keys(rng)[0], reference.buffer.num_seen_examples, CAPACITY, BATCH, MEMORY
                )
                check_scores(scores_of, model, state, previous, draws, reference)
            (loss, aux), grads = value_and_grad(state.params, state, glanced, rng)
            buffer, scores, order = aux["gss"]
            if g == 0:
                filled = min(reference.buffer.num_seen_examples, CAPACITY)
                reference.begin_observe(torch.from_numpy(np.array(order)[:filled]).long())
            expected = reference.step(as_torch(batch["x"]), as_torch(batch["y"], torch.long))
            np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
            assert_mlp_grads_match(grads, net, rtol=1e-5, atol=1e-7)
            assert_buffers_match(buffer, scores, reference.buffer)
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            state = state._replace(
                params=params, model_state=aux["model_state"], opt_state=opt_state
            )
            state = state._replace(algo=update(state.algo, state, glanced, aux, rng))
        previous = batch
    # The phase ends: its last batch is offered at the final parameters.
    rng = jax.random.PRNGKey(999)
    draws = offer_draws(
        gss_keys(rng)[0], reference.buffer.num_seen_examples, CAPACITY, BATCH, MEMORY
    )
    check_scores(scores_of, model, state, previous, draws, reference)
    algo = algorithm.end_task(state, None, rng, model)
    assert not bool(algo.has_pending) and int(algo.buffer.num_seen) == BATCH * len(STREAM_LABELS)
    assert_buffers_match(algo.buffer, algo.scores, reference.buffer)
    # Every branch of the reference ran: filling, replacing, keeping, skipping.
    assert {kind for kind, _, _ in reference.buffer.events} == {"fill", "replace", "keep", "skip"}


def check_scores(scores_of, model, state, batch, draws, reference):
    """The JAX scores of this offer equal the reference's `get_grad_score` values, then the
    reference offers the batch (`add_data`) with the same draws."""
    index, valid, _ = draws
    memory = jax.tree.map(lambda b: b[index], state.algo.buffer.items)
    batch_score, example_scores = scores_of(
        model,
        state.params,
        state.model_state,
        batch["x"],
        batch["y"],
        memory["x"],
        memory["y"],
        valid,
    )
    start = len(reference.buffer.events)
    reference.buffer.add_data(as_torch(batch["x"]), as_torch(batch["y"], torch.long), draws)
    events = reference.buffer.events[start:]
    if reference.buffer.num_seen_examples > BATCH:  # the buffer held examples: c was scored
        np.testing.assert_allclose(float(batch_score), events[0][1], rtol=1e-5)
    for (_, _, single), score in zip(events, np.asarray(example_scores)):
        if single is not None:
            np.testing.assert_allclose(score, single, rtol=1e-5)


def assert_buffers_match(buffer, scores, reference: ReferenceBuffer):
    assert int(buffer.num_seen) == reference.num_seen_examples
    if reference.is_empty():
        return
    np.testing.assert_array_equal(
        np.asarray(buffer.items["x"], np.float64), reference.examples.numpy()
    )
    np.testing.assert_array_equal(buffer.items["y"], reference.labels.numpy())
    np.testing.assert_allclose(scores, reference.scores.numpy(), rtol=1e-5)
