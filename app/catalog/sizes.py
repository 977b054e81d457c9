"""The provider's image size rules, and how a request's size, aspect_ratio and quality resolve
to one concrete size and price tier (contract section 3; the table is docs/sizes.md)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.catalog.schemas import Model

TIERS = ("1K", "2K", "4K")
TIER_TARGET_AREA = {"1K": 1024 * 1024, "2K": 2048 * 2048, "4K": 8_294_400}
MIN_PIXELS, MAX_PIXELS = 655_360, 8_294_400
MAX_EDGE, MAX_RATIO, EDGE_STEP = 3840, 3, 16
RATIO_TOLERANCE = 0.03  # size vs aspect_ratio consistency; ratio_label matching
MAPPING_TOLERANCE = 0.01  # size_for fallback when no exact-ratio size fits a tier

_SIZE_RE = re.compile(r"(0|[1-9][0-9]*)x(0|[1-9][0-9]*)")
_RATIO_RE = re.compile(r"([1-9][0-9]{0,3}):([1-9][0-9]{0,3})")


class CatalogError(Exception):
    """Invalid catalog file or request parameter; `param` names the request field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _size_problem(width: int, height: int) -> str | None:
    """The first provider size rule that WxH breaks, or None when it is valid."""
    long_edge, short_edge = max(width, height), min(width, height)
    if short_edge <= 0:
        return "both edges must be positive"
    if long_edge > MAX_EDGE:
        return f"the long edge must be at most {MAX_EDGE} pixels"
    if width % EDGE_STEP or height % EDGE_STEP:
        return f"both edges must be multiples of {EDGE_STEP}"
    if long_edge > MAX_RATIO * short_edge:
        return f"the long edge must be at most {MAX_RATIO} times the short edge"
    if not MIN_PIXELS <= width * height <= MAX_PIXELS:
        return f"pixels must be {MIN_PIXELS:,} to {MAX_PIXELS:,} (got {width * height:,})"
    return None


def parse_size(text: str) -> tuple[int, int] | None:
    """'auto' -> None; a valid 'WxH' -> (W, H); anything else -> CatalogError(param='size')."""
    if text == "auto":
        return None
    match = _SIZE_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise CatalogError(f"size {text!r} must be 'auto' or WxH, e.g. 1024x1024", "size")
    too_long = max(len(match[1]), len(match[2])) > 6  # giant numbers: never int() them
    width, height = (10**7, 1) if too_long else (int(match[1]), int(match[2]))
    problem = _size_problem(width, height)
    if problem:
        raise CatalogError(f"size {text}: {problem}", "size")
    return width, height


def tier_of(width: int, height: int) -> str:
    """Resolution tier of a WxH size."""
    area = width * height
    return "1K" if area <= 1_572_864 else "2K" if area <= 4_194_304 else "4K"


def _parse_ratio(text: str) -> tuple[int, int]:
    match = _RATIO_RE.fullmatch(text)
    if match is None:
        raise CatalogError(f"aspect_ratio {text!r} must be 'auto' or A:B", "aspect_ratio")
    return int(match[1]), int(match[2])


def _ratio_error(width: int, height: int, a: int, b: int) -> float:
    """Relative difference between W/H and a/b."""
    return abs(width * b - height * a) / (height * a)


@cache
def size_for(aspect_ratio: str, tier: str) -> str:
    """The size for a ratio + tier (rule in docs/sizes.md); 'auto' at 1K for the 'auto' ratio."""
    if tier not in TIER_TARGET_AREA:
        raise CatalogError(f"unknown quality tier {tier!r}", "quality")
    if aspect_ratio == "auto":
        return "auto" if tier == "1K" else size_for("1:1", tier)
    a, b = _parse_ratio(aspect_ratio)
    target = max(TIER_TARGET_AREA[tier], MIN_PIXELS)
    best: tuple[tuple[bool, int, float], str] | None = None
    for height in range(EDGE_STEP, MAX_EDGE + 1, EDGE_STEP):
        base = height * a // b // EDGE_STEP * EDGE_STEP
        for width in (base, base + EDGE_STEP):
            if width <= 0 or width * height > target or _size_problem(width, height):
                continue
            err = _ratio_error(width, height, a, b)
            key = (err != 0, -width * height, err)  # exact ratio first, then largest area
            if tier_of(width, height) == tier and err <= MAPPING_TOLERANCE:
                best = min(best or (key, ""), (key, f"{width}x{height}"))
    if best is None:
        raise CatalogError(f"aspect_ratio {aspect_ratio} has no valid {tier} size", "aspect_ratio")
    return best[1]


def ratio_label(width: int, height: int, ratios: Iterable[str]) -> str:
    """The closest of `ratios` within 3% of W/H, else the reduced fraction 'W:H'."""
    usable = [ratio for ratio in ratios if _RATIO_RE.fullmatch(ratio)]
    scored = [(_ratio_error(width, height, *_parse_ratio(ratio)), ratio) for ratio in usable]
    best = min(scored, key=lambda item: item[0], default=None)
    if best is not None and best[0] <= RATIO_TOLERANCE:
        return best[1]
    g = math.gcd(width, height)
    return f"{width // g}:{height // g}"


@dataclass(frozen=True)
class ResolvedSize:
    """What a request's size / aspect_ratio / quality resolve to."""

    size: str
    width: int | None
    height: int | None
    aspect_ratio: str
    tier: str
    render_quality: str


def resolve_size(
    model: Model, *, size: str | None, aspect_ratio: str | None, quality: str | None
) -> ResolvedSize:
    """Apply the contract's size / aspect_ratio / quality rules (section 5)."""
    render, asked = "auto", None
    tiers: list[str] = list(model.qualities)
    if quality in model.render_qualities:
        render = quality
    elif quality in tiers:
        asked = quality
    elif quality is not None:
        allowed = ", ".join(model.render_qualities + tiers)
        raise CatalogError(f"quality {quality!r} must be one of: {allowed}", "quality")
    if aspect_ratio is not None and aspect_ratio not in model.aspect_ratios:
        allowed = ", ".join(model.aspect_ratios)
        raise CatalogError(
            f"aspect_ratio {aspect_ratio!r} must be one of: {allowed}", "aspect_ratio"
        )
    if size is None or size == "auto":
        ratio = aspect_ratio or model.default_aspect_ratio
        tier: str = asked or model.default_quality
        concrete = size_for(ratio, tier)
        width, height = parse_size(concrete) or (None, None)
        return ResolvedSize(concrete, width, height, ratio, tier, render)
    width, height = parse_size(size) or (0, 0)
    tier = tier_of(width, height)
    if asked is not None and asked != tier:
        raise CatalogError(f"quality {asked} does not match size {size} ({tier})", "quality")
    if tier not in tiers:
        raise CatalogError(f"size {size} is {tier}, which {model.id} does not offer", "size")
    label = ratio_label(width, height, model.aspect_ratios)
    if aspect_ratio is not None and aspect_ratio != "auto":
        a, b = _parse_ratio(aspect_ratio)
        if _ratio_error(width, height, a, b) > RATIO_TOLERANCE:
            message = f"aspect_ratio {aspect_ratio} is inconsistent with size {size} ({label})"
            raise CatalogError(message, "aspect_ratio")
        label = aspect_ratio
    return ResolvedSize(size, width, height, label, tier, render)
