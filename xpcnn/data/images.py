"""Images from files, as a model's input: .npy arrays, or any picture Pillow reads (.png, .jpg, ...)."""

from __future__ import annotations

import pathlib
import warnings

import numpy as np

from .pixels import MEAN, STD, normalize
from .files import DataError, read_npy

__all__ = ["read_images"]


def read_images(path: str, shape: tuple[int, int, int], invert: bool = False, mean=None, std=None) -> np.ndarray:
    """Images from a .npy ((H, W), (N, H, W) or (N, C, H, W); uint8 0..255 or floats 0..1) or any image file
    Pillow reads (.png, .jpg, ...: converted to grayscale or RGB for ``shape`` (C, H, W) and resized) as
    floats (N, C, H, W), normalized with ``mean`` and ``std`` (MNIST's by default). Unreadable or misshapen
    input is a :class:`~xpcnn.data.DataError` naming the file; a light background on one-channel images, which
    MNIST models misread, is a warning."""
    channels, height, width = shape
    file = pathlib.Path(path)
    if not file.is_file():
        raise DataError(f"image {path} does not exist" + (" (it is a directory)" if file.is_dir() else ""))
    if file.suffix.lower() == ".npy":
        pixels = read_npy(file)
    else:
        pixels = _picture(file, channels, height, width)
    if pixels.size == 0:
        raise DataError(f"{path}: holds no images (shape {pixels.shape})")
    if pixels.ndim == 2:
        pixels = pixels[None]
    if pixels.ndim == 3 and channels == 1:
        pixels = pixels[:, None]
    if pixels.ndim != 4 or tuple(pixels.shape[1:]) != tuple(shape):
        raise DataError(f"{path}: expected images of {channels}x{height}x{width} ((H, W), (N, H, W) or "
                           f"(N, C, H, W)); got shape {pixels.shape}")
    if np.issubdtype(pixels.dtype, np.floating):
        if not np.all(np.isfinite(pixels)):
            raise DataError(f"{path}: holds NaN or infinite pixel values")
        if pixels.min() < 0 or pixels.max() > 1:
            raise DataError(f"{path}: float pixels must lie in 0..1; got {pixels.min():g}..{pixels.max():g}")
        pixels = np.round(pixels * 255).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 (0..255) or float (0..1) pixels; got {pixels.dtype}")
    if invert:
        pixels = 255 - pixels
    elif channels == 1:
        border = np.concatenate([pixels[:, :, 0, :], pixels[:, :, -1, :], pixels[:, :, :, 0], pixels[:, :, :, -1]],
                                axis=-1)
        if border.mean() > 127:
            warnings.warn(f"{path}: the background looks light; the model was trained on light digits on a dark "
                          "background (MNIST): pass invert=True (--invert) if this is a dark drawing on white",
                          UserWarning, stacklevel=2)
    return normalize(pixels, "float32", MEAN if mean is None else mean, STD if std is None else std)


def pillow():
    """Pillow's ``Image``, ``ImageOps`` and ``UnidentifiedImageError``, imported when a picture is first read (it is
    an optional dependency); an ImportError saying how to install it when it is absent."""
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:
        raise ImportError("reading image files (.png, .jpg, .bmp, ...) needs Pillow: pip install pillow "
                          "(or give .npy arrays)") from None
    return Image, ImageOps, UnidentifiedImageError


def _picture(file: pathlib.Path, channels: int, height: int, width: int) -> np.ndarray:
    """A picture as uint8 pixels (1, C, H, W) the way a viewer shows it: turned upright by its EXIF orientation
    (phone photos), 16-bit pixels scaled to 8 bits (not clipped), and a transparent background filled with the
    shade that contrasts with the drawing (an RGBA digit stays visible)."""
    Image, ImageOps, UnidentifiedImageError = pillow()
    try:
        with Image.open(file) as opened:
            image = ImageOps.exif_transpose(opened)
            if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                deep = np.asarray(image, dtype=np.float64)
                image = Image.fromarray(np.round(deep * (255 / 65535)).clip(0, 255).astype(np.uint8), "L")
            elif image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")
            if image.mode in ("RGBA", "LA", "PA"):
                image = _flatten_alpha(image.convert("RGBA"))
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height))
            pixels = np.asarray(image)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{file}: too many pixels to read safely ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{file}: not an image Pillow can read ({type(exc).__name__}: {exc})") from None
    return pixels[None, None] if channels == 1 else np.moveaxis(pixels, -1, 0)[None]


def _flatten_alpha(image):
    """An RGBA picture on an opaque background: white under a dark drawing, black under a light one (the
    drawing is where it is opaque), as a viewer shows it on a contrasting page."""
    from PIL import Image

    rgba = np.asarray(image, dtype=np.float64)
    alpha = rgba[..., 3:] / 255
    shade = rgba[..., :3].mean(axis=-1, keepdims=True)
    drawing = float((shade * alpha).sum() / max(alpha.sum(), 1e-9))
    background = 255.0 if drawing < 128 else 0.0
    flat = rgba[..., :3] * alpha + background * (1 - alpha)
    return Image.fromarray(np.round(flat).astype(np.uint8), "RGB")
