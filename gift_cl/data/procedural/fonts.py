"""The DejaVu fonts the digits and glyphs domains draw with (matplotlib's bundled copy first)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from gift_cl.data.base import DataError


def _font_dirs() -> list[Path]:
    # matplotlib's bundled DejaVu comes first: it is pinned with the venv, the system copy is not
    dirs = []
    try:
        import matplotlib

        dirs.append(Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        pass
    dirs.append(Path("/usr/share/fonts/truetype/dejavu"))
    return dirs


@lru_cache(maxsize=None)
def _font_path(name: str) -> str:
    for d in _font_dirs():
        if (d / name).is_file():
            return str(d / name)
    raise DataError(f"procedural: font {name!r} not found in {[str(d) for d in _font_dirs()]}; "
                    "install matplotlib or fonts-dejavu")


@lru_cache(maxsize=512)
def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(_font_path(name), px)
