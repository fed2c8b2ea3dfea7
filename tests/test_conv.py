"""xpcnn.functional.conv: pad2d and conv2d against loop references and finite differences, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st

import reference
from helpers import assert_gradients_close, assert_like, numerical_gradients, per_backend_examples
from xpcnn import functional as F


@st.composite
def conv_cases(draw):
    n = draw(st.sampled_from([0, 1, 3]))
    c, o = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = max(1, span_h - 2 * ph + draw(st.integers(0, 7)))
    w = max(1, span_w - 2 * pw + draw(st.integers(0, 7)))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return dict(shape=(n, c, h, w), wshape=(o, c, kh, kw), stride=(sh, sw), dilation=(dh, dw),
                padding=(ph, pw), bias=bias, seed=seed)


def _data(case, dtype=np.float64):
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal(case["shape"]).astype(dtype)
    w = rng.standard_normal(case["wshape"]).astype(dtype)
    b = rng.standard_normal(case["wshape"][0]).astype(dtype) if case["bias"] else None
    return x, w, b


@per_backend_examples(case=conv_cases())
def test_conv2d_forward_matches_loop_reference(B, case):
    x, w, b = _data(case)
    ph, pw = case["padding"]
    want = reference.conv2d(x, w, b, case["stride"], (ph, ph, pw, pw), case["dilation"])
    bx, bw = B.asarray(x), B.asarray(w)
    bb = None if b is None else B.asarray(b)
    y = F.conv2d(bx, bw, bb, stride=case["stride"], padding=case["padding"], dilation=case["dilation"])
    assert_like(y, bx)
    assert tuple(y.shape) == want.shape
    np.testing.assert_allclose(B.numpy(y), want, rtol=1e-10, atol=1e-10)


@per_backend_examples(case=conv_cases())
def test_conv2d_backward_shapes_and_adjointness(B, case):
    """<dy, conv(x)> is linear in x and w: the gradients satisfy <dx, x> + <dw, w> == 2 <dy, y - b>
    whatever the geometry, and have the shapes, dtype and device of their inputs."""
    x, w, b = _data(case)
    bx, bw = B.asarray(x), B.asarray(w)
    bb = None if b is None else B.asarray(b)
    y, cache = F.conv2d_forward(bx, bw, bb, stride=case["stride"], padding=case["padding"],
                                dilation=case["dilation"])
    dy = np.random.default_rng(case["seed"] + 1).standard_normal(tuple(y.shape))
    dx, dw, db = F.conv2d_backward(B.asarray(dy), cache)
    assert_like(dx, bx), assert_like(dw, bw)
    assert tuple(dx.shape) == x.shape and tuple(dw.shape) == w.shape
    y_no_bias = B.numpy(y) - (0 if b is None else b[None, :, None, None])
    lhs = np.sum(B.numpy(dx) * x) + np.sum(B.numpy(dw) * w)
    np.testing.assert_allclose(lhs, 2 * np.sum(dy * y_no_bias), rtol=1e-9, atol=1e-9)
    if b is None:
        assert db is None
    else:
        assert_like(db, bb)
        np.testing.assert_allclose(B.numpy(db), dy.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)


GRAD_CASES = [
    dict(shape=(2, 3, 7, 6), wshape=(4, 3, 3, 2), stride=(2, 3), padding=(1, 0), dilation=(1, 1)),
    dict(shape=(1, 2, 8, 7), wshape=(3, 2, 2, 3), stride=(1, 1), padding=(2, 1), dilation=(2, 2)),
    dict(shape=(3, 1, 6, 6), wshape=(2, 1, 4, 4), stride=(1, 1), padding="same", dilation=(1, 1)),
    dict(shape=(2, 2, 5, 9), wshape=(2, 2, 3, 3), stride=(3, 2), padding="valid", dilation=(1, 2)),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: f"{c['shape']}-{c['wshape']}-s{c['stride']}-p{c['padding']}")
def test_conv2d_backward_matches_finite_differences(B, case):
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal(case["shape"]), rng.standard_normal(case["wshape"])
    b = rng.standard_normal(case["wshape"][0])
    kwargs = {k: case[k] for k in ("stride", "padding", "dilation")}
    y, cache = F.conv2d_forward(B.asarray(x), B.asarray(w), B.asarray(b), **kwargs)
    dy = rng.standard_normal(tuple(y.shape))
    analytic = [B.numpy(g) for g in F.conv2d_backward(B.asarray(dy), cache)]

    def loss(x, w, b):
        return float(np.sum(B.numpy(F.conv2d(B.asarray(x), B.asarray(w), B.asarray(b), **kwargs)) * dy))

    assert_gradients_close(analytic, numerical_gradients(loss, [x, w, b]))


def test_conv2d_float32_same_on_every_backend(B):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3, 11, 10)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    want = reference.conv2d(x, w, b, (2, 1), (1, 1, 2, 2), (1, 1))
    y = F.conv2d(B.asarray(x), B.asarray(w), B.asarray(b), stride=(2, 1), padding=(1, 2))
    assert_like(y, B.asarray(x))
    np.testing.assert_allclose(B.numpy(y), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_conv2d_zero_dy_gives_zero_gradients_and_inputs_are_unchanged(B):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((2, 3, 3, 3)), rng.standard_normal(2)
    bx, bw, bb = B.asarray(x), B.asarray(w), B.asarray(b)
    y, cache = F.conv2d_forward(bx, bw, bb, padding=1)
    dy = B.xp.zeros(y.shape, dtype=y.dtype, device=B.device)
    grads = F.conv2d_backward(dy, cache)
    for g in grads:
        assert not np.any(B.numpy(g))
    ones = B.xp.ones(y.shape, dtype=y.dtype, device=B.device)
    F.conv2d_backward(ones, cache)
    np.testing.assert_array_equal(B.numpy(bx), x)
    np.testing.assert_array_equal(B.numpy(bw), w)
    np.testing.assert_array_equal(B.numpy(bb), b)
    np.testing.assert_array_equal(B.numpy(dy), 0)


def test_conv2d_empty_batch(B):
    x = B.xp.zeros((0, 2, 5, 5), dtype=B.xp.float32, device=B.device)
    w = B.asarray(np.ones((3, 2, 3, 3), np.float32))
    b = B.asarray(np.ones(3, np.float32))
    y, cache = F.conv2d_forward(x, w, b, padding=1)
    assert tuple(y.shape) == (0, 3, 5, 5)
    dx, dw, db = F.conv2d_backward(y, cache)
    assert tuple(dx.shape) == (0, 2, 5, 5) and tuple(dw.shape) == (3, 2, 3, 3) and tuple(db.shape) == (3,)
    assert not np.any(B.numpy(dw)) and not np.any(B.numpy(db))
    assert_like(dx, x), assert_like(dw, w), assert_like(db, b)


def test_conv2d_same_padding_keeps_size_and_matches_reference(B):
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((1, 1, 6, 5)), rng.standard_normal((1, 1, 4, 2))   # even kernels
    y = F.conv2d(B.asarray(x), B.asarray(w), padding="same")
    assert tuple(y.shape) == (1, 1, 6, 5)
    np.testing.assert_allclose(B.numpy(y), reference.conv2d(x, w, pads=(1, 2, 0, 1)), rtol=1e-12)


def test_conv2d_matches_torch_forward_and_backward():
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    y, cache = F.conv2d_forward(x, w, b, stride=2, padding=(1, 2), dilation=(1, 2))
    dy = rng.standard_normal(y.shape)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=2, padding=(1, 2), dilation=(1, 2))
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in zip(F.conv2d_backward(dy, cache), (tx.grad, tw.grad, tb.grad)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- pad2d
def test_pad2d_forward_backward(B):
    x = B.asarray(np.arange(12.0).reshape(1, 1, 3, 4))
    y, cache = F.pad2d_forward(x, (1, 0, 2, 3), value=-1)
    assert tuple(y.shape) == (1, 1, 4, 9)
    host = B.numpy(y)
    np.testing.assert_array_equal(host[0, 0, 1:, 2:6], np.arange(12.0).reshape(3, 4))
    assert (host[0, 0, 0] == -1).all() and (host[0, 0, :, :2] == -1).all() and (host[0, 0, :, 6:] == -1).all()
    dx = F.pad2d_backward(y, cache)
    assert_like(dx, x)
    np.testing.assert_array_equal(B.numpy(dx), B.numpy(x))


def test_pad2d_backward_matches_finite_differences(B):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4))
    y, cache = F.pad2d_forward(B.asarray(x), (2, 1))
    dy = rng.standard_normal(tuple(y.shape))
    numeric = numerical_gradients(lambda x: float(np.sum(B.numpy(F.pad2d(B.asarray(x), (2, 1))) * dy)), [x])
    assert_gradients_close([B.numpy(F.pad2d_backward(B.asarray(dy), cache))], numeric)


# --------------------------------------------------------------------------- bad input
def _arrays(B, xshape=(1, 2, 5, 5), wshape=(3, 2, 3, 3), dtype=np.float32):
    return B.asarray(np.ones(xshape, dtype)), B.asarray(np.ones(wshape, dtype))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(xshape=(2, 5, 5)), ValueError, ["x must be 4-D", "(2, 5, 5)"]),
        (dict(wshape=(3, 2, 3)), ValueError, ["w must be 4-D"]),
        (dict(wshape=(3, 4, 3, 3)), ValueError, ["2 channels", "4 input channels"]),
        (dict(dtype=np.uint8), TypeError, ["floating dtype", "uint8"]),
        (dict(wshape=(3, 2, 6, 3)), ValueError, ["larger than the padded input", "5x5"]),
    ],
)
def test_conv2d_rejects_bad_shapes(B, kwargs, error, words):
    x, w = _arrays(B, **kwargs)
    with pytest.raises(error) as info:
        F.conv2d(x, w)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(stride=0), ValueError, ["stride must be >= 1", "0"]),
        (dict(dilation=(1, 0)), ValueError, ["dilation must be >= 1"]),
        (dict(padding=-1), ValueError, ["padding must be >= 0", "-1"]),
        (dict(padding="full"), ValueError, ["'valid' or 'same'", "'full'"]),
        (dict(padding="same", stride=2), ValueError, ["stride 1"]),
        (dict(stride=1.5), TypeError, ["stride must be an integer", "1.5"]),
    ],
)
def test_conv2d_rejects_bad_hyperparameters(B, kwargs, error, words):
    x, w = _arrays(B)
    with pytest.raises(error) as info:
        F.conv2d(x, w, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_conv2d_rejects_bad_bias_and_mixed_dtypes(B):
    x, w = _arrays(B)
    with pytest.raises(ValueError, match=r"b must have shape \(3,\); got \(2,\)"):
        F.conv2d(x, w, B.asarray(np.ones(2, np.float32)))
    with pytest.raises(TypeError, match="w must have the dtype of x"):
        F.conv2d(x, B.asarray(np.ones((3, 2, 3, 3))))


def test_conv2d_rejects_mixed_libraries():
    torch = pytest.importorskip("torch", reason="torch not installed: no second library to mix")
    with pytest.raises(TypeError, match="different array libraries"):
        F.conv2d(np.ones((1, 1, 3, 3)), torch.ones((1, 1, 2, 2), dtype=torch.float64))


def test_conv2d_rejects_mixed_devices():
    import array_api_strict as xps

    xps.set_array_api_strict_flags(api_version="2024.12")
    x = xps.ones((1, 1, 3, 3))
    w = xps.ones((1, 1, 2, 2), device=xps.Device("device1"))
    with pytest.raises(ValueError, match="different devices"):
        F.conv2d(x, w)


def test_conv2d_rejects_non_arrays():
    with pytest.raises(TypeError, match="x must be an array.*list"):
        F.conv2d([[1.0]], np.ones((1, 1, 1, 1)))


# --------------------------------------------------------------------------- the batch-innermost layout
def _to_chwn(B, a):
    return B.xp.permute_dims(a, (1, 2, 3, 0))


def _to_nchw(B, a):
    return B.xp.permute_dims(a, (3, 0, 1, 2))


@per_backend_examples(case=conv_cases())
def test_conv2d_chwn_layout_matches_nchw(B, case):
    """layout='CHWN' (what xpcnn's layers use) gives the NCHW results, permuted, forward and backward."""
    x, w, b = _data(case)
    bx, bw = B.asarray(x), B.asarray(w)
    bb = None if b is None else B.asarray(b)
    kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"])
    y, cache = F.conv2d_forward(bx, bw, bb, **kwargs)
    y2, cache2 = F.conv2d_forward(_to_chwn(B, bx), bw, bb, layout="CHWN", **kwargs)
    np.testing.assert_allclose(B.numpy(_to_nchw(B, y2)), B.numpy(y), rtol=1e-12, atol=1e-12)
    dy = B.asarray(np.random.default_rng(case["seed"]).standard_normal(tuple(y.shape)))
    grads = F.conv2d_backward(dy, cache)
    grads2 = F.conv2d_backward(_to_chwn(B, dy), cache2)
    np.testing.assert_allclose(B.numpy(_to_nchw(B, grads2[0])), B.numpy(grads[0]), rtol=1e-12, atol=1e-12)
    for g, g2 in zip(grads[1:], grads2[1:]):
        if g is None:
            assert g2 is None
        else:
            assert_like(g2, g)
            np.testing.assert_allclose(B.numpy(g2), B.numpy(g), rtol=1e-12, atol=1e-12)
    assert F.conv2d_backward(_to_chwn(B, dy), cache2, input_grad=False)[0] is None


@pytest.mark.parametrize("layout", ["NCHW", "CHWN"])
@pytest.mark.parametrize("out_channels, in_channels, kernel", [
    (3, 1, 3),      # few output channels, small patches: one matrix-vector product per channel
    (10, 1, 3),     # 8 or more output channels: one matrix product
    (3, 12, 5),     # few output channels, patches of 300: one matrix product
])
def test_conv2d_backward_matches_loop_reference_in_every_product_form(B, layout, out_channels, in_channels, kernel):
    """The weight gradient is computed in different ways depending on the shapes; each matches the loops."""
    rng = np.random.default_rng(out_channels * 100 + in_channels)
    x = rng.standard_normal((3, in_channels, 9, 8))
    w = rng.standard_normal((out_channels, in_channels, kernel, kernel))
    bx = B.asarray(x) if layout == "NCHW" else _to_chwn(B, B.asarray(x))
    y, cache = F.conv2d_forward(bx, B.asarray(w), stride=(1, 2), padding=1, layout=layout)
    dy = rng.standard_normal(tuple(y.shape))
    dx, dw, db = F.conv2d_backward(B.asarray(dy), cache)
    if layout == "CHWN":
        dx, dy = _to_nchw(B, dx), np.transpose(dy, (3, 0, 1, 2))
    want_dx, want_dw = reference.conv2d_backward(x, w, dy, stride=(1, 2), pads=(1, 1, 1, 1))
    assert db is None
    np.testing.assert_allclose(B.numpy(dw), want_dw, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(B.numpy(dx), want_dx, rtol=1e-10, atol=1e-10)


def test_conv2d_rejects_unknown_layout_and_names_chwn_channels(B):
    x, w = _arrays(B)
    with pytest.raises(ValueError, match="layout must be one of NCHW, CHWN; got 'NHWC'"):
        F.conv2d(x, w, layout="NHWC")
    with pytest.raises(ValueError, match=r"x has 1 channels but w expects 2 .*\(1, 2, 5, 5\) in CHWN"):
        F.conv2d(x, w, layout="CHWN")          # an NCHW array passed as CHWN: its first axis is read as C


ROUTES = [F.ConvRoute(columns, dx) for columns in F.COLUMN_ROUTES for dx in F.INPUT_GRAD_ROUTES]


@per_backend_examples(case=conv_cases(), layout=st.sampled_from(["NCHW", "CHWN"]))
def test_every_route_gives_the_textbook_results(B, case, layout):
    """Each named route, forced where the geometry admits it, gives the forward and both gradients of the
    textbook route (im2col + col2im, itself checked against the loops and finite differences above); the
    cache records the route and the backward follows it."""
    x, w, b = _data(case)
    bx = B.asarray(x) if layout == "NCHW" else _to_chwn(B, B.asarray(x))
    bw, bb = B.asarray(w), None if b is None else B.asarray(b)
    kwargs = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"], layout=layout)
    dy = None
    results = {}
    for route in [F.ConvRoute()] + ROUTES:
        try:
            y, cache = F.conv2d_forward(bx, bw, bb, route=route, **kwargs)
        except ValueError as exc:                       # a route this geometry cannot take says so
            assert "route" in str(exc)
            continue
        assert cache.route == route
        if dy is None:
            dy = B.asarray(np.random.default_rng(case["seed"]).standard_normal(tuple(y.shape)))
        results[route] = (y, *F.conv2d_backward(dy, cache))
    textbook = results.pop(F.ConvRoute("im2col", "col2im"))
    for ours in results.values():
        for got, want in zip(ours, textbook):
            if want is None:
                assert got is None
            else:
                assert_like(got, want)
                np.testing.assert_allclose(B.numpy(got), B.numpy(want), rtol=1e-12, atol=1e-12)


def test_routes_that_a_geometry_cannot_take_are_refused_by_name():
    x, w = np.zeros((1, 2, 6, 6)), np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match="columns='rows' needs stride 1 along the rows; got stride \\(2, 2\\)"):
        F.conv2d(x, w, stride=2, route="rows")
    with pytest.raises(ValueError, match="input_grad='transposed' needs stride and dilation 1"):
        F.conv2d(x, w, dilation=2, route=F.ConvRoute("im2col", "transposed"))
    with pytest.raises(ValueError, match="route must be None, 'im2col', 'rows' or a ConvRoute"):
        F.conv2d(x, w, route=3)
    with pytest.raises(ValueError, match="route columns must be one of im2col, rows; got 'fft'"):
        F.conv2d(x, w, route="fft")
    assert F.conv2d_forward(x, w, route="im2col")[1].route == F.ConvRoute("im2col", "col2im")


def test_the_chosen_routes_follow_the_size_rules():
    """ResNet's 16@32x32 3x3 layer at batch 64 and LeNet-5's layers at batch 256 take the rows route; LeNet-5's
    layers at batch 64 and strided layers one product. 'same' 3x3 layers take the transposed input gradient,
    LeNet-5's second layer (whose dy columns would be 5x larger) and strided layers col2im."""
    from xpcnn.functional import conv

    for x_shape, w_shape, padding, stride, columns, dx in (
            ((16, 32, 32, 64), (16, 16, 3, 3), 1, 1, "rows", "transposed"),
            ((1, 28, 28, 256), (6, 1, 5, 5), 2, 1, "rows", "col2im"),
            ((6, 14, 14, 256), (16, 6, 5, 5), 0, 1, "rows", "col2im"),
            ((1, 28, 28, 64), (6, 1, 5, 5), 2, 1, "im2col", "col2im"),
            ((6, 14, 14, 64), (16, 6, 5, 5), 0, 1, "im2col", "col2im"),
            ((16, 64, 64, 64), (32, 16, 3, 3), 1, 2, "im2col", "col2im")):
        geometry = conv.conv_geometry("conv2d", x_shape, w_shape, stride, padding, 1, "CHWN")
        assert F.choose_route(geometry, w_shape[0]) == F.ConvRoute(columns, dx), (x_shape, w_shape)


GROUPED = [  # (N, C, O, groups, kernel, stride, padding): grouped, depthwise, depthwise with a multiplier, 1x1
    (3, 4, 6, 2, 3, 1, 1), (2, 6, 6, 6, 3, 1, 1), (2, 6, 12, 3, 3, 2, 1), (2, 4, 8, 4, 3, 1, 0), (2, 8, 4, 2, 1, 1, 0)]


@pytest.mark.parametrize("layout", ["NCHW", "CHWN"])
@pytest.mark.parametrize("case", GROUPED)
def test_grouped_conv2d_matches_torch_on_every_route(B, case, layout):
    """Forward and all three gradients of a grouped / depthwise convolution agree with PyTorch's ``groups=``,
    on every route the geometry allows, on every backend."""
    torch = pytest.importorskip("torch", reason="torch not installed: no PyTorch comparison")
    n, c, o, groups, k, stride, padding = case
    rng = np.random.default_rng(sum(case))
    x, w, b = rng.standard_normal((n, c, 9, 8)), rng.standard_normal((o, c // groups, k, k)), rng.standard_normal(o)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=padding, groups=groups)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    to, back = ((0, 1, 2, 3), (0, 1, 2, 3)) if layout == "NCHW" else ((1, 2, 3, 0), (3, 0, 1, 2))
    routes = [None, "im2col"] + ([F.ConvRoute("im2col", "transposed")] if stride == 1 and padding <= k - 1 else [])
    for route in routes:
        y, cache = F.conv2d_forward(B.asarray(x.transpose(to).copy()), B.asarray(w), B.asarray(b), stride, padding,
                                    layout=layout, route=route, groups=groups)
        dx, dw, db = F.conv2d_backward(B.asarray(dy.transpose(to).copy()), cache)
        for got, want in ((B.numpy(y).transpose(back), ty), (B.numpy(dx).transpose(back), tx.grad),
                          (B.numpy(dw), tw.grad), (B.numpy(db), tb.grad)):
            np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-10, err_msg=str(route))


def test_grouped_conv2d_refuses_groups_that_do_not_fit(B):
    x = B.asarray(np.zeros((1, 4, 5, 5)))
    with pytest.raises(ValueError, match=r"groups=3 must divide the input channels \(4\) and the output channels \(6\)"):
        F.conv2d(x, B.asarray(np.zeros((6, 1, 3, 3))), groups=3)
    with pytest.raises(ValueError, match=r"w expects 1 input channels per group \(2 groups\)"):
        F.conv2d(x, B.asarray(np.zeros((6, 1, 3, 3))), groups=2)
    with pytest.raises(ValueError, match="groups must be >= 1; got 0"):
        F.conv2d(x, B.asarray(np.zeros((6, 4, 3, 3))), groups=0)
    with pytest.raises(TypeError, match="groups must be an integer; got True"):
        F.conv2d(x, B.asarray(np.zeros((6, 4, 3, 3))), groups=True)
    with pytest.raises(ValueError, match="route columns='rows' takes one group; got groups=2"):
        F.conv2d(x, B.asarray(np.zeros((6, 2, 3, 3))), groups=2, route="rows")
