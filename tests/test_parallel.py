"""Batch shards (the executor in xpcnn.parallel): a batch split over threads gives the one-thread results, a failing
shard neither hangs nor hides its error, and several threads using the package never meet."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import xpcnn
from xpcnn import parallel

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


@pytest.fixture
def tiny_shards(monkeypatch):
    """Any batch of two or more samples is big enough to shard, in up to two threads."""
    monkeypatch.setattr(parallel, "MIN_SHARD_ELEMENTS", 1)
    monkeypatch.setenv("XPCNN_THREADS", "2")


def _sharded(model) -> bool:
    return model._last is not None and isinstance(model._last.cache, parallel.ShardedCache)


def _step(model, x, labels):
    """forward, loss, backward with input gradient; what comes out of it."""
    loss_fn = xpcnn.nn.CrossEntropyLoss()
    out = model(x)
    sharded = _sharded(model)
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
    with parallel.use_threads(1):
        expected = _step(build(), x, labels)                              # one piece
    with parallel.use_threads(n):
        got = _step(build(), x, labels)
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
            sharded, _, loss, _, _, _ = _step(model, x, labels)
            assert sharded
            optimizer.step()
            model.zero_grad()
            losses.append(loss)
        runs.append((losses, xpcnn.backend.to_numpy(optimizer.flat_parameters())))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0][-1] < runs[0][0][0] * 0.5


def test_models_stay_their_own_class_and_still_use_every_core(tiny_shards, tmp_path):
    """Built and loaded models are the user's Sequential (no wrapper: its errors, its type), and a big batch of
    the hand-written loop's plain ``model(x)`` still runs in shards."""
    model = xpcnn.models.lenet5()
    assert type(model) is xpcnn.nn.Sequential and not hasattr(model, "module")
    xpcnn.save(tmp_path / "m.npz", model)
    loaded = xpcnn.load(tmp_path / "m.npz").model
    assert type(loaded) is xpcnn.nn.Sequential
    loaded(np.zeros((4, 1, 28, 28), dtype=np.float32))
    assert _sharded(loaded)
    with pytest.raises(ValueError, match="^Sequential.backward: dy must have"):
        loaded.backward(np.zeros((3, 10), dtype=np.float32))


def test_use_threads_overrides_for_a_block_and_checks_its_argument(monkeypatch):
    monkeypatch.setenv("XPCNN_THREADS", "2")
    with parallel.use_threads(1):
        assert parallel.threads() == 1
        with parallel.use_threads(3):
            assert parallel.threads() == 3
        assert parallel.threads() == 1
    assert parallel.threads() == 2
    for bad in (0, True, 1.5, "2"):
        with pytest.raises(ValueError, match=f"use_threads: n must be a whole number >= 1; got {bad!r}"):
            with parallel.use_threads(bad):
                pass


def test_a_forward_leaves_malloc_alone_and_tune_allocator_is_explicit():
    """Calling a model changes nothing process-wide; fit and the CLI call tune_allocator themselves."""
    import subprocess
    import sys

    code = ("import numpy as np, xpcnn\n"
            "m = xpcnn.models.lenet5(); m(np.zeros((256, 1, 28, 28), np.float32))\n"
            "assert not xpcnn.parallel._allocator_tried, 'a forward tuned malloc'\n"
            "print(xpcnn.parallel.tune_allocator())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("True", "False")


def test_plan_shards_only_what_it_may(monkeypatch):
    monkeypatch.setenv("XPCNN_THREADS", "2")
    big = np.zeros((256, 1, 28, 28), dtype=np.float32)
    lenet = xpcnn.models.lenet5()
    assert parallel.plan(lenet, big) == 2
    assert parallel.plan(lenet, big[:128]) == 1, "LeNet-5 below batch 256 is as fast or faster in one thread"
    resnet = xpcnn.models.resnet8()
    assert parallel.plan(resnet, big[:64]) == 2, "ResNet-8 does ~6x LeNet-5's work per sample and module"
    assert parallel.plan(resnet, big[:16]) == 1
    wrong = np.zeros((4096, 1, 3, 3), dtype=np.float32)        # LeNet-5's second convolution cannot take it
    assert parallel.plan(lenet, wrong) == 1, "an input the model refuses is not sharded (the call will say why)"
    with_dropout = xpcnn.nn.Sequential(xpcnn.nn.Flatten(), xpcnn.nn.Dropout(0.5), xpcnn.nn.Linear(784, 10))
    assert parallel.plan(with_dropout, big) == 1, "dropout masks come from one generator, in order"

    class Mine(xpcnn.nn.Module):                 # a user's module has made no promise
        def _forward(self, x, run):
            return x, None
    assert parallel.plan(xpcnn.nn.Sequential(Mine(), xpcnn.nn.Flatten()), big) == 1
    monkeypatch.setenv("XPCNN_THREADS", "1")
    assert parallel.plan(lenet, big) == 1
    monkeypatch.setenv("XPCNN_THREADS", "2")
    parallel.limit_threads(1)                    # what xpcnn.distributed.init does with 2 ranks on 2 cores
    try:
        assert parallel.plan(lenet, big) == 2, "XPCNN_THREADS, when set, wins"
        monkeypatch.delenv("XPCNN_THREADS")
        assert parallel.plan(lenet, big) == 1
    finally:
        parallel.limit_threads(None)


def test_plan_never_shards_other_backends():
    strict = pytest.importorskip("array_api_strict", reason="array_api_strict is not installed")
    with xpcnn.use_backend("array_api_strict"):
        model = xpcnn.models.lenet5()
        x = strict.zeros((256, 1, 28, 28), dtype=strict.float32)
        with parallel.use_threads(2):
            assert parallel.plan(model, x) == 1


def test_a_bad_thread_count_is_refused(monkeypatch):
    monkeypatch.setenv("XPCNN_THREADS", "two")
    with pytest.raises(ValueError, match="XPCNN_THREADS must be a whole number >= 1.*'two'"):
        parallel.threads()


class _FailsInShard(xpcnn.nn.Module):
    """Raises in one shard only (told apart by its batch size), before the BatchNorm after it, where the other
    shards wait for its sums."""

    shardable = True

    def __init__(self, batch):
        super().__init__()
        self.batch = batch

    def _forward(self, x, run):
        if x.shape[-1] == self.batch:              # CHWN: the batch is the last axis
            raise ValueError("shard trouble")
        return x, None


@pytest.mark.parametrize("batch", [3, 2])
def test_a_failing_shard_raises_its_own_error_and_nothing_hangs(tiny_shards, batch):
    model = xpcnn.nn.Sequential(xpcnn.nn.Conv2D(1, 2, 3), _FailsInShard(batch),
                                               xpcnn.nn.BatchNorm2D(2), xpcnn.nn.Flatten())
    x = np.zeros((5, 1, 5, 5), dtype=np.float32)             # shards of 3 and 2
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
    out = xpcnn.nn.Sequential(xpcnn.nn.Conv2D(1, 2, 3), xpcnn.nn.BatchNorm2D(2),
                                             xpcnn.nn.Flatten())(x)
    assert out.shape == (5, 18), "the pool works after a failure"


def test_a_shard_left_alone_at_a_sum_times_out_with_the_cause(tiny_shards, monkeypatch):
    """A module that sums on one shard only (a broken promise) ends in an error that says what happened."""
    monkeypatch.setattr(parallel, "BARRIER_TIMEOUT_S", 0.5)

    class SumsOnOneShard(xpcnn.nn.Module):
        shardable = True

        def _forward(self, x, run):
            if x.shape[-1] == 3:
                run.reduce(1)
            return x, None

    model = xpcnn.nn.Sequential(SumsOnOneShard(), xpcnn.nn.Flatten())
    with pytest.raises(parallel.ShardTimeoutError, match="waited 0.5 s for the other shards"):
        model(np.zeros((5, 1, 4, 4), dtype=np.float32))


def _blas_threads():
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_blas_threads_are_given_back_even_when_calls_overlap(tiny_shards):
    """Sharded calls from four threads at once, on two models: every one finishes, and BLAS has its thread
    count back afterwards (overlapping calls run in one piece instead of setting and restoring it out of order)."""
    before = _blas_threads()
    models = [xpcnn.models.lenet5() for _ in range(2)]
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    errors = []

    def work(model):
        try:
            for _ in range(5):
                model.eval()(x)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(models[i % 2],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and not errors
    assert _blas_threads() == before


def test_three_threads_starting_one_fresh_model_finish_with_its_answer(tiny_shards):
    """The first call of a fresh ResNet (which traces shapes to plan shards) from three threads at once: none
    deadlocks, and each gets what one thread alone gets."""
    x = np.random.default_rng(3).standard_normal((8, 3, 12, 12))
    expected = xpcnn.models.resnet8(in_channels=3, image_size=12, dtype="float64").eval()(x)
    model = xpcnn.models.resnet8(in_channels=3, image_size=12, dtype="float64").eval()
    results, errors = [None] * 3, []

    def work(i):
        try:
            results[i] = model(x)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not errors
    for got in results:
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_two_threads_train_two_models_and_a_summary_meets_neither(tiny_shards):
    """Each thread trains its own model while a third prints summaries of both: every step of both runs gives
    what it gives alone (the shape trace has no global and no module state)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, 8)

    def train(model, out):
        optimizer = xpcnn.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(6):
            out.append(_step(model, x, labels)[2])
            optimizer.step()
            model.zero_grad()

    alone = []
    train(xpcnn.models.lenet5(), alone)
    models, losses, errors, stop = [xpcnn.models.lenet5() for _ in range(2)], [[], []], [], threading.Event()

    def guarded(i):
        try:
            train(models[i], losses[i])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    def summaries():
        while not stop.is_set():
            for model in models:
                model.summary()

    workers = [threading.Thread(target=guarded, args=(i,)) for i in range(2)]
    watcher = threading.Thread(target=summaries)
    watcher.start()
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    stop.set()
    watcher.join(timeout=30)
    assert not errors
    np.testing.assert_allclose(losses[0], alone, rtol=1e-5)
    np.testing.assert_allclose(losses[1], alone, rtol=1e-5)


def test_backward_checks_the_batch_of_a_sharded_output(tiny_shards):
    model = xpcnn.models.lenet5()
    model(np.zeros((4, 1, 28, 28), dtype=np.float32))
    assert _sharded(model)
    with pytest.raises(ValueError, match="batch size 4; got shape \\(3, 10\\)"):
        model.backward(np.zeros((3, 10), dtype=np.float32))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_gets_its_own_shard_threads(tiny_shards):
    """A child forked after shards ran (a data-loading worker, say) inherits the pool but not its threads."""
    model = xpcnn.models.lenet5()
    x = np.zeros((4, 1, 28, 28), dtype=np.float32)
    model(x)
    pid = os.fork()
    if pid == 0:                                   # the child: shard again, exit 0 if that worked
        try:
            model(x)
            os._exit(0 if _sharded(model) else 1)
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


def _others(monkeypatch, count):
    """Pretend ``count`` tasks of other processes are running (and forget the last readings)."""
    monkeypatch.setattr(parallel, "_others_running", lambda: count)
    monkeypatch.setattr(parallel, "_load_readings", [float("-inf"), count, count])


def test_a_busy_machine_changes_blas_threads_never_the_shards(monkeypatch):
    """Other processes' load holds BLAS back in one-piece calls (where its products give the same bits on any
    thread count) but never changes the shard count, which decides the summation order: results do not depend on the
    load. A thread count the user set is kept."""
    monkeypatch.delenv("XPCNN_THREADS", raising=False)
    monkeypatch.setattr(parallel, "usable_cores", lambda: 4)
    x = np.zeros((2, 3), np.float32)
    _others(monkeypatch, 0)
    assert parallel.threads() == 4 and parallel._one_piece_blas(x) is None
    _others(monkeypatch, 3)
    assert parallel.threads() == 4 and parallel._one_piece_blas(x) == 1
    _others(monkeypatch, 1)
    assert parallel._one_piece_blas(x) == 3
    _others(monkeypatch, 9)
    assert parallel._one_piece_blas(x) == 1, "never below one"
    monkeypatch.setenv("XPCNN_THREADS", "4")
    assert parallel._one_piece_blas(x) is None, "a number the user set is kept"


def test_one_passing_reading_does_not_take_the_cores(monkeypatch):
    """The smaller of the last two readings counts: a process seen once changes nothing."""
    readings = iter([0, 2, 0, 2, 2])
    monkeypatch.setattr(parallel, "_others_running", lambda: next(readings))
    monkeypatch.setattr(parallel, "_load_readings", [float("-inf"), 0, 0])
    monkeypatch.setattr(parallel, "LOAD_INTERVAL_S", 0.0)
    assert [parallel.busy_elsewhere() for _ in range(5)] == [0, 0, 0, 0, 2]


class _BlasProbe(xpcnn.nn.Module):
    """Records BLAS's thread count while it runs (forward and backward; not the shape traces of empty batches)."""

    shardable = True

    def __init__(self):
        super().__init__()
        self.seen = []

    def _forward(self, x, run):
        if x.size:
            self.seen.append(_blas_threads())
        return x, None

    def _backward(self, dy, cache, run, input_grad):
        self.seen.append(_blas_threads())
        return dy


def test_under_load_a_call_in_one_piece_holds_blas_to_the_free_cores_and_gives_them_back(monkeypatch):
    pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")
    before = _blas_threads()
    if not before or max(before) < 2:
        pytest.skip(f"BLAS runs {before} threads here: nothing to hold back")
    monkeypatch.delenv("XPCNN_THREADS", raising=False)
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    monkeypatch.setattr(parallel, "blas_keeps_bits", lambda: True)
    probe = _BlasProbe()
    model = xpcnn.nn.Sequential(probe, xpcnn.nn.Flatten())
    x = np.zeros((2, 1, 2, 2), np.float32)
    _others(monkeypatch, 0)
    model.backward(model(x))
    _others(monkeypatch, 2)
    model.backward(model(x))
    assert probe.seen[:2] == [before, before], "quiet: BLAS as it was"
    assert probe.seen[2:] == [[1] * len(before)] * 2, "loaded: one thread"
    assert _blas_threads() == before
    monkeypatch.setattr(parallel, "blas_keeps_bits", lambda: False)
    model.backward(model(x))
    assert probe.seen[4:] == [before, before], "kernels whose bits change with the threads: the load changes nothing"


def test_blas_keeps_bits_says_whether_one_thread_gives_the_bits_of_all():
    threadpoolctl = pytest.importorskip("threadpoolctl", reason="threadpoolctl is not installed")
    cores = parallel._default_cores()
    if cores < 2:
        pytest.skip("one core: BLAS has no other thread count to compare")
    rng, same = np.random.default_rng(0), True
    for m, k, n in parallel._BIT_CHECKS:
        a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
        with threadpoolctl.threadpool_limits(1, user_api="blas"):
            one = a @ b
        with threadpoolctl.threadpool_limits(cores, user_api="blas"):
            same = same and np.array_equal(one, a @ b)
    with parallel._busy:
        assert parallel.blas_keeps_bits.__wrapped__() is same


def test_busy_processes_are_seen():
    """Two pure-Python busy loops in other processes show in busy_elsewhere() (Linux)."""
    import subprocess
    import sys
    import time

    if not os.path.exists("/proc/loadavg"):
        pytest.skip("no /proc/loadavg on this platform: xpcnn cannot see other processes' load here")
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        deadline, seen = time.monotonic() + 5, 0
        while time.monotonic() < deadline and seen < 1:
            time.sleep(parallel.LOAD_INTERVAL_S)
            seen = parallel.busy_elsewhere()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert seen >= 1
