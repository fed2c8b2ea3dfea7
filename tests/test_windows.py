"""xpcnn.functional.windows: updates that immutable arrays accept, and ops that never write into their inputs."""

from __future__ import annotations

import numpy as np
import pytest

from xpcnn import functional as F
from xpcnn.functional import windows


def test_add_at_and_set_at_update_and_return_the_target(B):
    target = B.asarray(np.zeros((3, 4)))
    value = B.asarray(np.ones((3, 2)))
    out = windows.add_at(target, (slice(None), slice(0, 4, 2)), value)
    out = windows.add_at(out, (slice(None), slice(0, 2)), value)
    np.testing.assert_array_equal(B.numpy(out), [[2, 1, 1, 0]] * 3)
    out = windows.set_at(out, (slice(None), slice(3, 4)), B.asarray(np.full((3, 1), 7.0)))
    np.testing.assert_array_equal(B.numpy(out), [[2, 1, 1, 7]] * 3)


def test_add_at_on_an_array_that_cannot_be_written_returns_an_updated_copy():
    target = np.zeros((2, 3))
    target.flags.writeable = False
    out = windows.add_at(target, (slice(None), slice(1, 3)), np.ones((2, 2)))
    np.testing.assert_array_equal(out, [[0, 1, 1]] * 2)
    np.testing.assert_array_equal(target, 0)              # the read-only target is untouched
    out = windows.set_at(target, (0, slice(None)), np.full(3, 5.0))
    np.testing.assert_array_equal(out, [[5, 5, 5], [0, 0, 0]])


def _read_only(*arrays):
    for a in arrays:
        if a is not None:
            a.flags.writeable = False
    return arrays


OPS = {
    "conv2d": lambda x, r: (F.conv2d_forward, (x, r.standard_normal((3, 2, 3, 3)), r.standard_normal(3)),
                            dict(padding=1), F.conv2d_backward),
    "conv2d strided": lambda x, r: (F.conv2d_forward, (x, r.standard_normal((3, 2, 2, 2)), None),
                                    dict(stride=2, padding=(1, 0)), F.conv2d_backward),
    "conv2d rows": lambda x, r: (F.conv2d_forward, (x, r.standard_normal((3, 2, 3, 3)), None),
                                 dict(route="rows", padding=1), F.conv2d_backward),
    "conv2d transposed": lambda x, r: (F.conv2d_forward, (x, r.standard_normal((3, 2, 3, 3)), None),
                                       dict(route=F.ConvRoute("im2col", "transposed"), padding=1),
                                       F.conv2d_backward),
    "max_pool2d": lambda x, r: (F.max_pool2d_forward, (x,), dict(kernel_size=2), F.max_pool2d_backward),
    "max_pool2d overlapping": lambda x, r: (F.max_pool2d_forward, (x,), dict(kernel_size=3, stride=1, padding=1),
                                            F.max_pool2d_backward),
    "max_pool2d 1x1": lambda x, r: (F.max_pool2d_forward, (x,), dict(kernel_size=1), F.max_pool2d_backward),
    "avg_pool2d": lambda x, r: (F.avg_pool2d_forward, (x,), dict(kernel_size=3, stride=2, padding=1),
                                F.avg_pool2d_backward),
    "pad2d": lambda x, r: (F.pad2d_forward, (x,), dict(padding=(1, 2)), F.pad2d_backward),
    "relu": lambda x, r: (F.relu_forward, (x,), {}, F.relu_backward),
    "sigmoid": lambda x, r: (F.sigmoid_forward, (x,), {}, F.sigmoid_backward),
    "batch_norm": lambda x, r: (F.batch_norm_forward, (x, r.standard_normal(2), r.standard_normal(2),
                                                       np.zeros(2), np.ones(2)), {}, F.batch_norm_backward),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_ops_never_write_into_their_inputs(name):
    """Every input, and the gradient passed to the backward, is a read-only NumPy array: an op that wrote into
    one would raise here; and the outputs equal those from writeable inputs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 6, 5))
    forward, args, kwargs, backward = OPS[name](x, rng)
    expected_out = forward(*[None if a is None else a.copy() for a in args], **kwargs)
    frozen = _read_only(*[None if a is None else a.copy() for a in args])
    out = forward(*frozen, **kwargs)
    dy = rng.standard_normal(tuple(out[0].shape))
    expected_grads = backward(dy.copy(), expected_out[1])
    (dy,) = _read_only(dy)
    grads = backward(dy, out[1])
    np.testing.assert_array_equal(out[0], expected_out[0])
    for got, want in zip(grads if isinstance(grads, tuple) else (grads,),
                         expected_grads if isinstance(expected_grads, tuple) else (expected_grads,)):
        if want is not None:
            np.testing.assert_array_equal(got, want)
    for a, b in zip(frozen, args):
        if a is not None:
            np.testing.assert_array_equal(a, b)
