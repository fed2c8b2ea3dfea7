"""Batch shards (xpcnn.nn.shards): a batch split over threads gives the one-thread results, and a failing shard
neither hangs nor hides its error."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xpcnn
from xpcnn.nn import shards

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def tiny_shards(monkeypatch):
    """Shard any batch of two or more samples, into as many shards as XPCNN_THREADS says."""
    monkeypatch.setattr(shards, "MIN_SHARD_ELEMENTS", 1)

    def use(n):
        monkeypatch.setenv("XPCNN_THREADS", str(n))
    return use


def _step(model, x, labels, use, n):
    """forward, loss, backward with input gradient, on ``n`` shards; what comes out of it."""
    use(n)
    loss_fn = xpcnn.nn.CrossEntropyLoss()
    out = model(x)
    sharded = isinstance(model._last[0], shards.ShardedCache)
    loss = loss_fn(out, labels)
    dx = model.backward(loss_fn.backward(), input_grad=True)
    return (sharded, out, float(loss), dx, [p.grad for p in model.parameters()],
            [b.data for b in model.buffers()])


NETS = {
    "lenet5": (lambda: xpcnn.models.lenet5(dtype="float64"), (1, 28, 28)),
    "resnet8": (lambda: xpcnn.models.resnet8(in_channels=3, image_size=12, dtype="float64"), (3, 12, 12)),
}


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("n, batch", [(2, 8), (3, 7)])
def test_shards_give_the_one_thread_results(tiny_shards, net, n, batch):
    """Outputs, loss, input gradient, every parameter gradient and BatchNorm's running statistics (synchronized
    over the shards: per-shard statistics would be off by far more than 1e-12), also for unequal shards."""
    build, shape = NETS[net]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *shape))
    labels = rng.integers(0, 10, batch)
    one, many = build(), build()
    expected = _step(one, x, labels, tiny_shards, 1)
    got = _step(many, x, labels, tiny_shards, n)
    assert not expected[0] and got[0], "the comparison must be one thread against shards"
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-12, atol=1e-12)
    assert got[2] == pytest.approx(expected[2], rel=1e-12)
    np.testing.assert_allclose(got[3], expected[3], rtol=1e-10, atol=1e-14)
    for g, e in zip(got[4] + got[5], expected[4] + expected[5]):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-14)


def test_sharded_steps_repeat_bit_for_bit_and_train(tiny_shards):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 16)
    runs = []
    for _ in range(2):
        model = xpcnn.models.lenet5()
        optimizer = xpcnn.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses = []
        for _ in range(5):
            _, _, loss, _, _, _ = _step(model, x, labels, tiny_shards, 2)
            optimizer.step()
            model.zero_grad()
            losses.append(loss)
        runs.append((losses, xpcnn.backend.to_numpy(optimizer.flat_parameters())))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0][-1] < runs[0][0][0] * 0.5


def test_plan_shards_only_what_it_may(monkeypatch):
    monkeypatch.setenv("XPCNN_THREADS", "2")
    xp = xpcnn.get_backend().xp
    big = np.zeros((256, 1, 28, 28), dtype=np.float32)
    lenet = xpcnn.models.lenet5()
    assert shards.plan(lenet, big, xp) == 2
    assert shards.plan(lenet, big[:128], xp) == 1, "LeNet-5 below batch 256 is as fast or faster in one thread"
    resnet = xpcnn.models.resnet8()
    assert shards.plan(resnet, big[:64], xp) == 2, "ResNet-8 does ~6x LeNet-5's work per sample and module"
    assert shards.plan(resnet, big[:16], xp) == 1
    wrong = np.zeros((4096, 1, 3, 3), dtype=np.float32)        # LeNet-5's second convolution cannot take it
    assert shards.plan(lenet, wrong, xp) == 1, "an input the model refuses is not sharded (the call will say why)"
    with_dropout = xpcnn.nn.Sequential(xpcnn.nn.Flatten(), xpcnn.nn.Dropout(0.5), xpcnn.nn.Linear(784, 10))
    assert shards.plan(with_dropout, big, xp) == 1, "dropout masks come from one generator, in order"

    class Mine(xpcnn.nn.Module):                 # a user's module has made no promise
        def _forward(self, x, layout):
            return x, None
    assert shards.plan(xpcnn.nn.Sequential(Mine(), xpcnn.nn.Flatten()), big, xp) == 1
    monkeypatch.setenv("XPCNN_THREADS", "1")
    assert shards.plan(lenet, big, xp) == 1
    monkeypatch.setenv("XPCNN_THREADS", "2")
    shards.limit_threads(1)                      # what xpcnn.distributed.init does with 2 ranks on 2 cores
    try:
        assert shards.plan(lenet, big, xp) == 2, "XPCNN_THREADS, when set, wins"
        monkeypatch.delenv("XPCNN_THREADS")
        assert shards.plan(lenet, big, xp) == 1
    finally:
        shards.limit_threads(None)


def test_plan_never_shards_other_backends(monkeypatch):
    strict = pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    monkeypatch.setenv("XPCNN_THREADS", "2")
    with xpcnn.use_backend("array_api_strict"):
        model = xpcnn.models.lenet5()
        x = strict.zeros((256, 1, 28, 28), dtype=strict.float32)
        assert shards.plan(model, x, strict) == 1


def test_a_bad_thread_count_is_refused(monkeypatch):
    monkeypatch.setenv("XPCNN_THREADS", "two")
    with pytest.raises(ValueError, match="XPCNN_THREADS must be a whole number >= 1.*'two'"):
        shards.threads()


class _FailsInShard(xpcnn.nn.Module):
    """Raises in one shard only, before the BatchNorm after it, where the other shards wait for its sums."""

    shardable = True

    def __init__(self, index):
        super().__init__()
        self.index = index

    def _forward(self, x, layout):
        if shards.current() is not None and shards.current().index == self.index:
            raise ValueError("shard trouble")
        return x, None


@pytest.mark.parametrize("index", [0, 1])
def test_a_failing_shard_raises_its_own_error_and_nothing_hangs(tiny_shards, index):
    tiny_shards(2)
    model = xpcnn.nn.Sequential(xpcnn.nn.Conv2D(1, 2, 3), _FailsInShard(index), xpcnn.nn.BatchNorm2D(2),
                                xpcnn.nn.Flatten())
    x = np.zeros((4, 1, 5, 5), dtype=np.float32)
    outcome = []

    def call():
        try:
            model(x)
        except Exception as exc:  # noqa: BLE001 -- inspected below
            outcome.append(exc)

    worker = threading.Thread(target=call)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "a shard waits forever"
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError) and "shard trouble" in str(outcome[0])
    assert shards.current() is None
    out = xpcnn.nn.Sequential(xpcnn.nn.Conv2D(1, 2, 3), xpcnn.nn.BatchNorm2D(2), xpcnn.nn.Flatten())(x)
    assert out.shape == (4, 18), "the pool works after a failure"


def test_blas_threads_are_given_back(tiny_shards):
    from threadpoolctl import threadpool_info

    before = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    tiny_shards(2)
    model = xpcnn.models.lenet5()
    model(np.zeros((4, 1, 28, 28), dtype=np.float32))
    assert isinstance(model._last[0], shards.ShardedCache)
    assert [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"] == before


def test_backward_checks_the_batch_of_a_sharded_output(tiny_shards):
    tiny_shards(2)
    model = xpcnn.models.lenet5()
    model(np.zeros((4, 1, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match="batch size 4; got shape \\(3, 10\\)"):
        model.backward(np.zeros((3, 10), dtype=np.float32))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork() on this platform")
def test_a_forked_child_gets_its_own_shard_threads(tiny_shards):
    """A child forked after shards ran (a data-loading worker, say) inherits the pool but not its threads."""
    import os

    tiny_shards(2)
    model = xpcnn.models.lenet5()
    x = np.zeros((4, 1, 28, 28), dtype=np.float32)
    model(x)
    pid = os.fork()
    if pid == 0:                                   # the child: shard again, exit 0 if that worked
        try:
            model(x)
            os._exit(0 if isinstance(model._last[0], shards.ShardedCache) else 1)
        except BaseException:  # noqa: BLE001
            os._exit(2)
    for _ in range(300):                           # 30 s; a child stuck on the parent's pool would never exit
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        threading.Event().wait(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on its parent's shard threads")
    assert os.waitstatus_to_exitcode(status) == 0
