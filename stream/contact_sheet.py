"""A contact sheet of an answer: the query image, then the top matched frames grouped by time segment, each
labelled with camera, time, score and geometric proof, the query's projected outline drawn on the frame.

Pure rendering (OpenCV drawing on numpy arrays): the frames are given (see :mod:`stream.framefetch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from stream.decode import RGBImage
from stream.formatting import format_time
from stream.messages import Match, QueryResult

__all__ = ["OUTLINE_RGB", "ContactSheet", "Tile", "render_contact_sheet"]

OUTLINE_RGB = (0, 255, 0)  # the projected query outline (pure green: tests find it by colour)
_BOX_RGB = (255, 200, 0)
_BG = (245, 245, 245)
_INK = (20, 20, 20)
_MUTED = (110, 110, 110)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SCALE = 0.45
_LINE = 17  # text line height, pixels
_PAD = 12


@dataclass(frozen=True)
class Tile:
    """Where one matched frame was drawn on the sheet.

    Attributes:
        match_index: position of the match in ``QueryResult.matches``.
        x, y, width, height: the frame's rectangle on the sheet, pixels.
        scale: sheet pixels per pixel of the frame grid of ``Match.geometry`` (its ``frame_size``).
    """

    match_index: int
    x: int
    y: int
    width: int
    height: int
    scale: float


@dataclass(frozen=True)
class ContactSheet:
    """A rendered sheet.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        tiles: the matched frames drawn, in drawing order.
    """

    image: RGBImage
    tiles: list[Tile]

    def write_png(self, path: str) -> None:
        """Write the sheet as PNG (maximum compression)."""
        ok = cv2.imwrite(path, cv2.cvtColor(self.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
        if not ok:
            raise OSError(f"cannot write {path}")


def _fit(image: RGBImage, width: int) -> RGBImage:
    h, w = image.shape[:2]
    height = max(1, round(h * width / w))
    interpolation = cv2.INTER_AREA if w > width else cv2.INTER_LINEAR
    out: RGBImage = np.asarray(cv2.resize(image, (width, height), interpolation=interpolation), dtype=np.uint8)
    return out


def _text(canvas: RGBImage, text: str, x: int, y: int, color: tuple[int, int, int] = _INK, bold: bool = False
          ) -> None:
    cv2.putText(canvas, text, (x, y), _FONT, _SCALE, color, 2 if bold else 1, cv2.LINE_AA)


def _clip(text: str, width: int) -> str:
    """``text`` cut to fit ``width`` pixels (``~`` marks the cut)."""
    cut = text
    while cut and cv2.getTextSize(cut if cut == text else cut + "~", _FONT, _SCALE, 1)[0][0] > width:
        cut = cut[:-1]
    return cut if cut == text else cut + "~"


def _caption(rank: int, m: Match) -> tuple[str, str]:
    g = m.geometry
    proof = "" if g is None else (f"{g.inliers} inliers" if g.status == "verified" else "no geometry")
    return (f"#{rank} {m.camera_id}", f"{format_time(m.timestamp)[11:23]}  score {m.score:.3f}  {proof}".rstrip())


def _draw_match(canvas: RGBImage, frame: RGBImage | None, m: Match, rank: int, x: int, y: int, width: int,
                why: str | None, index: int) -> tuple[Tile | None, int]:
    """Draw one tile at ``(x, y)``; returns the tile (None without a frame) and its total height."""
    line1, line2 = _caption(rank, m)
    if frame is None:
        height = round(width * 9 / 16)
        canvas[y:y + height, x:x + width] = (210, 210, 210)
        _text(canvas, "frame unavailable", x + 8, y + height // 2, _MUTED)
        if why:
            _text(canvas, _clip(why, width - 16), x + 8, y + height // 2 + _LINE, _MUTED)
        tile = None
    else:
        img = _fit(frame, width)
        height = img.shape[0]
        canvas[y:y + height, x:x + width] = img
        g = m.geometry
        grid_w = g.frame_size[0] if g is not None and g.frame_size else frame.shape[1]
        scale = width / grid_w
        tile = Tile(index, x, y, width, height, scale)
        if g is not None and g.status == "verified" and g.polygon is not None:
            sub = canvas[y:y + height, x:x + width]
            if g.box is not None:
                x0, y0, x1, y1 = (round(v * scale) for v in g.box)
                cv2.rectangle(sub, (x0, y0), (x1, y1), _BOX_RGB, 1, cv2.LINE_4)
            pts = np.round(np.asarray(g.polygon, dtype=np.float64) * scale).astype(np.int32)
            cv2.polylines(sub, [pts.reshape(-1, 1, 2)], True, OUTLINE_RGB, 2, cv2.LINE_4)
    _text(canvas, _clip(line1, width), x, y + height + _LINE - 3, bold=True)
    _text(canvas, _clip(line2, width), x, y + height + 2 * _LINE - 3, _MUTED)
    return tile, height + 2 * _LINE + 4


def _groups(result: QueryResult, top: int) -> list[tuple[str, list[int]]]:
    """``(heading, match indices)`` per segment holding one of the first ``top`` matches, best segment first."""
    shown = set(range(min(top, len(result.matches))))
    groups = []
    for n, seg in enumerate(result.segments, 1):
        members = [i for i in seg.match_indices if i in shown]
        if members:
            span = f"{format_time(seg.start)[11:23]} .. {format_time(seg.end)[11:23]}"
            groups.append((f"segment {n}: {seg.camera_id}  {format_time(seg.start)[:10]} {span} "
                           f"({seg.end - seg.start:.1f} s), {seg.frame_count} match"
                           f"{'es' if seg.frame_count != 1 else ''}, best score {seg.score:.3f}", members))
            shown -= set(members)
    if shown:  # a result without segments (or matches outside them)
        groups.append(("matches" if not groups else "other matches", sorted(shown)))
    return groups


def render_contact_sheet(result: QueryResult, frames: Sequence[RGBImage | None], query: RGBImage | None, *,
                         top: int = 8, columns: int = 4, tile_width: int = 300,
                         missing: Sequence[str | None] | None = None) -> ContactSheet:
    """The contact sheet of ``result``.

    Args:
        result: the answer (its matches, segments, latencies).
        frames: per match of ``result.matches[:top]``, its ``(H, W, 3)`` uint8 RGB frame at the pixel grid of its
            geometry (``Match.geometry.frame_size``), or None when it could not be fetched.
        query: the ``(h, w, 3)`` uint8 RGB query image, or None when unknown.
        top: matches shown.
        columns: tiles per row.
        tile_width: width of a frame tile, pixels.
        missing: per match, why its frame is None (shown on the tile).

    Returns:
        The sheet: query first, then one block per time segment (best first) with its matches in rank order.
    """
    n = min(top, len(result.matches))
    if len(frames) < n:
        raise ValueError(f"{len(frames)} frames for {n} matches")
    groups = _groups(result, top)
    width = _PAD + columns * (tile_width + _PAD)
    # heights: tiles of one row share the tallest frame's height
    def tile_height(i: int) -> int:
        f = frames[i]
        return (round(f.shape[0] * tile_width / f.shape[1]) if f is not None else round(tile_width * 9 / 16)) \
            + 2 * _LINE + 4

    q_img = _fit(query, min(tile_width, query.shape[1] * 2)) if query is not None else None
    header = 2 * _LINE + _PAD
    q_block = (q_img.shape[0] if q_img is not None else _LINE) + 2 * _LINE + _PAD
    rows = [[g[1][j:j + columns] for j in range(0, len(g[1]), columns)] for g in groups]
    body = sum(_LINE + 6 + sum(max(tile_height(i) for i in row) + _PAD for row in grp) for grp in rows)
    canvas: RGBImage = np.full((header + q_block + body + _PAD, width, 3), _BG, dtype=np.uint8)
    lat = result.latency_ms
    _text(canvas, f"query {result.query_id}: {result.status}, mode {result.mode}, {len(result.matches)} matches, "
                  f"{len(result.segments)} segments", _PAD, _PAD + _LINE - 4, bold=True)
    _text(canvas, "latency ms: " + "  ".join(f"{s}={lat[s]:.0f}" for s in ("extract", "stage1", "stage2", "verify",
                                                                           "total") if s in lat),
          _PAD, _PAD + 2 * _LINE - 4, _MUTED)
    y = header
    if q_img is not None:
        canvas[y:y + q_img.shape[0], _PAD:_PAD + q_img.shape[1]] = q_img
        cv2.rectangle(canvas, (_PAD - 1, y - 1), (_PAD + q_img.shape[1], y + q_img.shape[0]), OUTLINE_RGB, 1)
        _text(canvas, f"query image ({query.shape[1]}x{query.shape[0]})" if query is not None else "",
              _PAD, y + q_img.shape[0] + _LINE - 3, bold=True)
        y += q_img.shape[0] + 2 * _LINE + _PAD
    else:
        _text(canvas, "query image not available", _PAD, y + _LINE - 3, _MUTED)
        y += q_block
    tiles: list[Tile] = []
    for (heading, _), grp in zip(groups, rows, strict=True):
        _text(canvas, _clip(heading, width - 2 * _PAD), _PAD, y + _LINE - 3, bold=True)
        y += _LINE + 6
        for row in grp:
            for col, i in enumerate(row):
                x = _PAD + col * (tile_width + _PAD)
                why = missing[i] if missing is not None and i < len(missing) else None
                tile, _h = _draw_match(canvas, frames[i], result.matches[i], i + 1, x, y, tile_width, why, i)
                if tile is not None:
                    tiles.append(tile)
            y += max(tile_height(i) for i in row) + _PAD
    return ContactSheet(canvas, tiles)
