"""One image file -> the array a net sees: the single home of that code, used by both
`gpucnn predict` and folder datasets (so a net sees at predict time what it saw in training).

  decode    Pillow opens it; only its header is read until the size is known. A JPEG at
            least twice the target size is decoded at 1/2, 1/4 or 1/8 scale, never below the
            target (Pillow's draft: the inverse DCT does the shrinking, several times faster); anything still over MAX_PIXELS after that is refused, so a
            13000x13000 picture costs no gigabytes. EXIF orientation is applied.
  shrink    an image more than twice the target size is box-reduced by an integer factor
            first, so every later step (mode conversion, compositing) works on a small copy
  channels  converted to grey (Pillow's ITU-R 601-2 luma) or RGB; palette and alpha are
            composited on the background (black, or white with invert); CMYK, YCbCr, LAB, ...
            go through RGB
  size      to H x W by one stated rule (fit):
            stretch  the whole image resized to H x W (aspect ratio not kept)
            crop     the largest centred region of the target's aspect ratio, then resized
            pad      resized to fit inside H x W, aspect kept, borders of background colour
            resampling is Pillow's bilinear filter, antialiased when shrinking
  values    8-bit pixels / 255 and 16-bit ones / 65535, float images as they are, clipped to
            0..1; a NaN or infinite pixel makes the file unreadable (named, never a NaN output)

Pillow's warnings (decompression bomb, corrupt EXIF, ...) are caught while a file is read and
handed to the caller's `warn` as one line each, never printed with source lines.
"""
import errno
import os
import warnings

import numpy

from gpucnn.errors import GpucnnError, short
from gpucnn.install_hint import require

FITS = ("stretch", "crop", "pad")
MAX_PIXELS = 89_478_485  # Pillow's own MAX_IMAGE_PIXELS default: about 0.25 GB for an RGB 8-bit decode
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_GREY_MODES = ("1", "L", "LA", "La", "I", "F") + _SIXTEEN_BIT
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
NOT_REGULAR = "not a regular file (a FIFO, socket or device is not read)"


class UnreadableImage(ValueError):
    """One input file that is not an image Pillow can decode; the message says why."""


def pillow():
    """PIL.Image, or a GpucnnError naming the extra that installs it."""
    require("PIL.ImageOps", "image", "gpucnn reads images with Pillow, which is not installed")  # for _decode and _fit
    return require("PIL.Image", "image", "gpucnn reads images with Pillow, which is not installed")


def extensions():
    """Lower-case suffixes (".png", ...) of the formats this Pillow opens."""
    return set(pillow().registered_extensions())


def channels_of(mode):
    """1 for Pillow's grey modes, 3 for every colour one (palette, RGB(A), CMYK, ...)."""
    return 1 if mode in _GREY_MODES else 3


def why_not_readable(path):
    """None for a regular file (or a link to one), else why it is not read, in words."""
    try:
        st = os.stat(path)
    except OSError as e:
        if os.path.islink(path):
            return ("a symbolic link loop" if e.errno == errno.ELOOP
                    else f"a dangling symbolic link (to {os.readlink(path)!r}, which does not exist)")
        return "no such file or folder" if e.errno == errno.ENOENT else f"cannot be read ({e.strerror})"
    import stat

    if stat.S_ISREG(st.st_mode):
        return None
    return "a folder" if stat.S_ISDIR(st.st_mode) else NOT_REGULAR


def printable(path):
    """The path as text that stays on one line: repr-escaped when it holds a newline or
    another unprintable character."""
    return path if path.isprintable() else repr(path)


def header(path, warn=None, decode=False):
    """(height, width, mode) of the image as it will be seen (EXIF rotation applied), from its
    header alone, or with decode, after decoding it all (a JPEG at 1/8 scale) to find truncated
    or corrupt data; UnreadableImage if Pillow cannot."""
    Image = pillow()
    with _caught(warn):
        try:
            with Image.open(path) as im:
                (w, h), mode = im.size, im.mode
                if _orientation(im) in _ROTATED:
                    w, h = h, w
                if decode:
                    if im.format == "JPEG":
                        im.draft(None, (1, 1))
                    if w * h > MAX_PIXELS and im.size[0] * im.size[1] > MAX_PIXELS:
                        raise UnreadableImage(f"is {w}x{h} pixels; gpucnn decodes at most {MAX_PIXELS:,} pixels "
                                              f"(Pillow's limit)")
                    im.load()
                return h, w, mode
        except UnreadableImage:
            raise
        except Exception as e:  # whatever a broken file makes a decoder raise
            raise UnreadableImage(_why(e)) from None


def read_image(path, shape, fit="stretch", background=0, warn=None):
    """float32 (C, H, W) in 0..1 for shape (C, H, W); UnreadableImage naming the problem.

    background: 0 (black) or 255 (white), shown through transparent pixels and pad borders.
    warn: called with one line for each warning Pillow raises while reading (default: dropped)."""
    x, scale = _read(path, shape, fit, background, warn)
    return _channels(numpy.clip(x.astype(numpy.float32) * numpy.float32(scale), 0.0, 1.0), shape[0])


def read_bytes(path, shape, fit="stretch", background=0, warn=None):
    """uint8 (C, H, W): what a folder dataset stores, read_image's values times 255, rounded
    (8-bit sources exactly, without going through floats)."""
    x, scale = _read(path, shape, fit, background, warn)
    if x.dtype != numpy.uint8:
        x = numpy.rint(numpy.clip(x.astype(numpy.float32) * numpy.float32(scale), 0.0, 1.0) * numpy.float32(255))
    return _channels(x.astype(numpy.uint8, copy=False), shape[0])


def _read(path, shape, fit, background, warn):
    """(H, W) or (H, W, 3) array of the fitted image, and the factor that takes it to 0..1."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    channels, h, w = shape
    with _caught(warn):
        im = _decode(path, channels, (w, h))
        try:
            im, scale, fill = _pixels(im, channels, (w, h), background)
            if scale == 1.0 and not numpy.isfinite(numpy.asarray(im)).all():
                raise UnreadableImage("has NaN or infinite pixels; a float image must hold finite numbers")
            im = _fit(im, (w, h), fit, fill)
        except (OSError, ValueError) as e:
            if isinstance(e, UnreadableImage):
                raise
            raise UnreadableImage(f"an image of mode {im.mode} that cannot be converted ({_one_line(e)})") from None
    return numpy.asarray(im), scale


def _channels(x, channels):
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    return numpy.repeat(x, channels, axis=0) if x.shape[0] != channels else x  # grey 16-bit/float for RGB


def _decode(path, channels, size):
    Image = pillow()
    from PIL import ImageOps

    try:
        im = Image.open(path)
    except Image.DecompressionBombError:  # refused before the size reaches us: read it without the check
        _too_large(path)
    except Exception as e:
        raise UnreadableImage(_why(e)) from None
    try:
        if im.format == "JPEG" and im.mode in ("L", "RGB", "YCbCr"):
            w, h = size
            need = (w, h) if _orientation(im) not in _ROTATED else (h, w)
            im.draft("L" if channels == 1 else "RGB", need)  # DCT-scaled to 1/2..1/8, never below the target
        if im.size[0] * im.size[1] > MAX_PIXELS:
            raise UnreadableImage(f"is {im.size[0]}x{im.size[1]} pixels; gpucnn decodes at most "
                                  f"{MAX_PIXELS:,} pixels (Pillow's limit; a JPEG counts at up to 1/8 scale)")
        im.load()
        ImageOps.exif_transpose(im, in_place=True)  # the rotation phone photos keep in EXIF
        return im
    except UnreadableImage:
        im.close()
        raise
    except Exception as e:  # a truncated or hostile file: that file is skipped
        im.close()
        raise UnreadableImage(_why(e)) from None


def _too_large(path):
    Image = pillow()
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # only to read the header's size
    try:
        with Image.open(path) as im:
            w, h = im.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    raise UnreadableImage(f"is {w}x{h} pixels; gpucnn decodes at most {MAX_PIXELS:,} pixels (Pillow's limit)")


def _pixels(im, channels, size, background):
    """(image of mode L/RGB/F, factor to 0..1, background fill in its units), box-reduced first
    when much larger than `size`."""
    Image = pillow()
    if im.mode == "P" or im.mode == "1":
        im = im.convert("RGBA" if im.mode == "P" and "transparency" in im.info else "RGB" if im.mode == "P" else "L")
    if im.mode in _SIXTEEN_BIT:
        im = Image.fromarray(numpy.asarray(im, dtype=numpy.float32))
        scale, fill = 1 / 65535, 65535.0 * background / 255
    elif im.mode == "F":
        scale, fill = 1.0, background / 255
    else:
        scale, fill = 1 / 255, background
    factor = min(im.size[0] // (2 * size[0]), im.size[1] // (2 * size[1]))
    if factor >= 2:
        im = im.reduce(factor)
    if scale == 1 / 255:
        im = _flatten_alpha(Image, im, background)
        if im.mode not in ("L", "RGB"):  # CMYK, YCbCr, LAB, ...: through RGB
            im = im.convert("RGB")
        im = im.convert("L" if channels == 1 else "RGB")
    return im, scale, fill


def _flatten_alpha(Image, im, background):
    if im.mode not in ("RGBA", "LA", "La", "RGBa", "PA"):
        return im
    under = Image.new("RGBA", im.size, (background, background, background, 255))
    return Image.alpha_composite(under, im.convert("RGBA")).convert("RGB")


def _fit(im, size, fit, fill):
    Image = pillow()
    from PIL import ImageOps

    bilinear = Image.Resampling.BILINEAR
    if fit == "stretch":
        return im.resize(size, bilinear)
    if fit == "crop":
        return ImageOps.fit(im, size, bilinear)
    return ImageOps.pad(im, size, bilinear, color=fill if im.mode in ("L", "F") else (int(fill),) * 3)


def _orientation(im):
    try:
        return im.getexif().get(0x0112)
    except Exception:  # a damaged EXIF block: no rotation, as exif_transpose would do
        return None


class _caught(warnings.catch_warnings):
    """Pillow's warnings during one file, each handed to `warn` as one line (or dropped)."""

    def __init__(self, warn):
        super().__init__(record=True)
        self.warn = warn

    def __enter__(self):
        self.log = super().__enter__()
        warnings.simplefilter("always")
        return self.log

    def __exit__(self, *exc):
        super().__exit__(*exc)
        for w in self.log if self.warn else ():
            self.warn(str(w.message).splitlines()[0] if str(w.message) else w.category.__name__)
        return False


def _why(e):
    return f"not a readable image ({_one_line(e)})"


def _one_line(e):
    return short(e) if str(e) else type(e).__name__
