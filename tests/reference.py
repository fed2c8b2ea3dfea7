"""Independent float64 references, written with plain loops so they share nothing with xpcnn."""

from __future__ import annotations

import numpy as np


def conv2d(x, w, b=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)):
    """Cross-correlation by loops over output pixels. pads = (top, bottom, left, right)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    top, bottom, left, right = pads
    xp = np.zeros((n, c, h + top + bottom, wd + left + right))
    xp[:, :, top:top + h, left:left + wd] = x
    span_h, span_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    ho = (xp.shape[2] - span_h) // stride[0] + 1
    wo = (xp.shape[3] - span_w) // stride[1] + 1
    y = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            r, s = i * stride[0], j * stride[1]
            patch = xp[:, :, r:r + span_h:dilation[0], s:s + span_w:dilation[1]]   # (n, c, kh, kw)
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_backward(x, w, dy, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)):
    """(dx, dw) of :func:`conv2d` by the same loop over output pixels, each pixel's window
    receiving w * dy and giving patch * dy."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    top, bottom, left, right = pads
    xp = np.zeros((n, c, h + top + bottom, wd + left + right))
    xp[:, :, top:top + h, left:left + wd] = x
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    span_h, span_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    for i in range(dy.shape[2]):
        for j in range(dy.shape[3]):
            r, s = i * stride[0], j * stride[1]
            window = (slice(None), slice(None), slice(r, r + span_h, dilation[0]), slice(s, s + span_w, dilation[1]))
            dw += np.einsum("nckl,no->ockl", xp[window], dy[:, :, i, j])
            dxp[window] += np.einsum("ockl,no->nckl", w, dy[:, :, i, j])
    return dxp[:, :, top:top + h, left:left + wd], dw


def _windows(x, kernel, stride, padding, fill):
    n, c, h, w = x.shape
    ph, pw = padding
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), fill)
    xp[:, :, ph:ph + h, pw:pw + w] = x
    ho = (xp.shape[2] - kernel[0]) // stride[0] + 1
    wo = (xp.shape[3] - kernel[1]) // stride[1] + 1
    for i in range(ho):
        for j in range(wo):
            r, s = i * stride[0], j * stride[1]
            yield i, j, r, s, xp[:, :, r:r + kernel[0], s:s + kernel[1]], (ho, wo), xp.shape


def max_pool2d(x, kernel, stride, padding):
    """Returns (y, dx for dy) where dx_of(dy) sends each window's gradient to its first maximum."""
    x = np.asarray(x, np.float64)
    y = None
    for i, j, r, s, window, out_hw, _ in _windows(x, kernel, stride, padding, -np.inf):
        if y is None:
            y = np.zeros(x.shape[:2] + out_hw)
        y[:, :, i, j] = window.max(axis=(2, 3))
    return y


def max_pool2d_backward(x, dy, kernel, stride, padding):
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    ph, pw = padding
    dxp = None
    for i, j, r, s, window, out_hw, padded in _windows(x, kernel, stride, padding, -np.inf):
        if dxp is None:
            dxp = np.zeros(padded)
        for a in range(x.shape[0]):
            for c in range(x.shape[1]):
                k = int(np.argmax(window[a, c]))          # row-major FIRST maximum
                u, v = divmod(k, kernel[1])
                dxp[a, c, r + u, s + v] += dy[a, c, i, j]
    return dxp[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]


def avg_pool2d(x, kernel, stride, padding):
    x = np.asarray(x, np.float64)
    y = None
    for i, j, r, s, window, out_hw, _ in _windows(x, kernel, stride, padding, 0.0):
        if y is None:
            y = np.zeros(x.shape[:2] + out_hw)
        y[:, :, i, j] = window.mean(axis=(2, 3))
    return y
