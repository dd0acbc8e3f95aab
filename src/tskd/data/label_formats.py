"""Which files can hold a label map: lossy formats are refused before they are decoded.

Lossy compression (JPEG, and TIFFs compressed with JPEG, WebP, JPEG XL, JPEG XR or JPEG 2000)
changes values at mask edges, which turns two classes into dozens of grey values; such a label
file is refused with what to save instead (``check_label_file_format``). A colour TIFF
(``tiff_is_colour``) is read as an image of colours, not as label ids.
"""

from __future__ import annotations

from pathlib import Path

from tskd.errors import TskdInputError

LOSSY_SUFFIXES = (".jpg", ".jpeg")
LOSSY_TIFF_COMPRESSIONS = ("JPEG", "OJPEG", "WEBP", "JPEGXL", "JPEGXR", "JPEG2000")


def check_label_file_format(path: Path) -> None:
    """Refuse a label file ``path`` in a lossy format before decoding it.

    Lossy compression changes values at mask edges, which turns two classes into dozens of
    grey values.

    Args:
        path: the label file; a TIFF's compression is read from its first page (an unreadable
            TIFF passes here and is reported by the reader).

    Raises:
        TskdInputError: A JPEG, or a TIFF with a lossy compression (``LOSSY_TIFF_COMPRESSIONS``).
    """
    suffix = path.suffix.lower()
    if suffix in LOSSY_SUFFIXES:
        raise TskdInputError(
            f"{path}: JPEG is lossy and changes label values at mask edges, so it cannot hold a "
            "label map; save the labels as PNG or TIF instead"
        )
    if suffix in (".tif", ".tiff") and path.is_file():
        compression = _tiff_compression(path)
        if compression in LOSSY_TIFF_COMPRESSIONS:
            raise TskdInputError(
                f"{path}: the TIFF is {compression}-compressed, which is lossy and changes label "
                "values at mask edges; save the labels as PNG or as TIF without compression "
                "(or with lossless compression such as deflate)"
            )


def _tiff_compression(path: Path) -> str | None:
    """The compression name of a TIFF's first page, or None when it cannot be read."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return str(tif.pages[0].compression.name)
    except Exception:  # an unreadable file is reported by the reader, with its own message
        return None


def tiff_is_colour(path: Path) -> bool:
    """Tell whether a TIFF holds colour, which a label file cannot be.

    Args:
        path: the TIFF file; its first page is read (``tifffile``).

    Returns:
        True for several samples per pixel with RGB, YCbCr or CMYK (``SEPARATED``)
        photometric interpretation; False for grey values and for a file that cannot be read.
    """
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return bool(page.samplesperpixel > 1 and page.photometric.name in ("RGB", "YCBCR",
                                                                                "SEPARATED"))
    except Exception:
        return False
