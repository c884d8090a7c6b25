"""Journal sizes and a categorical palette whose colours stay apart (:func:`paper_style`, :data:`CATEGORICAL`);
reproducible files (:func:`savefig`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib as mpl
import seaborn as sns
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine

#: Journal column widths in inches (single column, two columns).
COLUMN_WIDTHS = {"single": 3.35, "double": 6.9}

# Metadata that would otherwise carry a date or a library version into the file; None drops the key.
_METADATA: dict[str, dict[str, Any]] = {
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None},
    "png": {"Software": None},
    "svg": {"Creator": None, "Date": None},
}
_HASHSALT = "trajgeo"  # fixed salt: SVG element ids are otherwise random per process

#: The categorical palette of :func:`paper_style` (``palette="trajgeo"``): the first four colours of seaborn's
#: "colorblind", then colours picked greedily (farthest first, in CIELAB, lightness 30-78, chroma 15-70) so
#: that any two of the first 15 differ by more than 25 CIE76 units (husl with 12 hues gives 18: the 12
#: built-in words' pitcher/plant and tie/trunk were hard to tell apart). Beyond about eight colours no palette
#: is safe for every colour-vision deficiency: label lines directly where it matters.
CATEGORICAL: tuple[str, ...] = (
    "#0173b2", "#de8f05", "#029e73", "#d55e00", "#bb1177", "#664433", "#aacc44", "#eeaacc", "#aa77ee",
    "#ddbb88", "#77ccdd", "#990022", "#335500", "#005555", "#774477", "#ff8877", "#0044aa", "#886611",
)


def categorical_palette(n: int | None = None) -> list[tuple[float, float, float]]:
    """The first ``n`` colours of :data:`CATEGORICAL` as RGB tuples (all 18 by default).

    Raises
    ------
    ValueError
        When more colours are asked for than the palette holds.
    """
    n = len(CATEGORICAL) if n is None else int(n)
    if not 0 <= n <= len(CATEGORICAL):
        raise ValueError(f"categorical_palette holds {len(CATEGORICAL)} colours, asked for {n}")
    return [mpl.colors.to_rgb(c) for c in CATEGORICAL[:n]]


def _paper_rc(width: float, aspect: float, font_size: float, palette: str) -> dict[str, Any]:
    """The rcParams of :func:`paper_style`: seaborn's "ticks" style with journal sizes and embedded fonts."""
    small = font_size - 1
    rc: dict[str, Any] = dict(sns.axes_style("ticks"))
    rc.update({
        "figure.figsize": (width, width * aspect),
        "figure.dpi": 150,
        "savefig.dpi": 300,
        "figure.constrained_layout.use": True,
        "font.size": font_size,
        "axes.labelsize": font_size,
        "axes.titlesize": font_size,
        "xtick.labelsize": small,
        "ytick.labelsize": small,
        "legend.fontsize": small,
        "legend.title_fontsize": small,
        "legend.frameon": False,
        "axes.linewidth": 0.6,
        "xtick.major.width": 0.6,
        "ytick.major.width": 0.6,
        "xtick.major.size": 3,
        "ytick.major.size": 3,
        "lines.linewidth": 1.2,
        "lines.markersize": 4,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.prop_cycle": cycler(color=categorical_palette() if palette == "trajgeo" else sns.color_palette(palette)),
        "pdf.fonttype": 42,
        "ps.fonttype": 42,
        "svg.hashsalt": _HASHSALT,
    })
    return rc


@contextmanager
def paper_style(column: str | float = "single", *, aspect: float = 0.75, font_size: float = 8.0,
                palette: str = "colorblind") -> Iterator[dict[str, Any]]:
    """Context in which new figures have journal sizes, readable fonts and a colour-blind-safe palette.

    Parameters
    ----------
    column : {"single", "double"} or float
        Figure width: 3.35 in (one journal column), 6.9 in (two columns), or a width in inches.
    aspect : float
        Default figure height as a fraction of the width.
    font_size : float
        Axis-label size in points; tick labels and legends are one point smaller.
    palette : str
        A seaborn palette name ("colorblind", the default, is safe for the common colour-vision deficiencies
        but has 10 colours, after which curves fall back to husl hues that look alike), or ``"trajgeo"``
        (:data:`CATEGORICAL`: 18 colours, any two of the first 15 clearly apart, the first four those of
        "colorblind"; the report's figures use it, for its 12 built-in words).

    Yields
    ------
    dict
        The rcParams in force inside the context.

    Notes
    -----
    PDF and PS fonts are embedded as TrueType (fonttype 42), so text stays editable and journals accept it.
    Layout is constrained (not ``bbox_inches="tight"``) so that saved figures keep the exact journal width.
    """
    if isinstance(column, str):
        if column not in COLUMN_WIDTHS:
            raise ValueError(f"paper_style: column must be one of {sorted(COLUMN_WIDTHS)} or a width in inches, "
                             f"got {column!r}")
        width = COLUMN_WIDTHS[column]
    else:
        width = float(column)
        if not width > 0:
            raise ValueError(f"paper_style: width must be positive, got {column!r}")
    rc = _paper_rc(width, aspect, font_size, palette)
    with mpl.rc_context(rc):
        yield dict(rc)


def savefig(fig: Figure | Axes, path_stem: str | os.PathLike, formats: Sequence[str] = ("pdf", "png"),
            dpi: float = 300, **kwargs: Any) -> list[Path]:
    """Write a figure in several formats, atomically and without timestamps or version strings.

    Parameters
    ----------
    fig : Figure or Axes
        What to save (an Axes saves its whole figure).
    path_stem : str or path
        Output path without extension; ``"out/fig"`` writes ``out/fig.pdf`` and ``out/fig.png``. Parent
        folders are created.
    formats : sequence of {"pdf", "png", "svg"}
        Formats to write; only these three are known to be reproducible byte for byte.
    dpi : float
        Resolution of raster output.
    **kwargs
        Passed to :meth:`matplotlib.figure.Figure.savefig` (``metadata`` is merged over the stripped defaults).

    Returns
    -------
    list of Path
        The files written, in the order of ``formats``.

    Notes
    -----
    Each file is written to a temporary name in the same folder and renamed over the target, so a reader
    never sees a half-written figure. PDF fonts are embedded as TrueType (fonttype 42) whatever the style.
    """
    figure = fig.figure if isinstance(fig, Axes) else fig
    if not isinstance(figure, Figure):
        raise TypeError(f"savefig: expected a matplotlib Figure or Axes, got {type(fig).__name__}")
    formats = [f.lower().lstrip(".") for f in ([formats] if isinstance(formats, str) else formats)]
    unknown = [f for f in formats if f not in _METADATA]
    if unknown:  # checked before anything is written
        raise ValueError(f"savefig: unsupported format(s) {unknown}; choose from {sorted(_METADATA)}")
    stem = Path(path_stem)
    if stem.suffix.lstrip(".").lower() in _METADATA:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    user_meta = kwargs.pop("metadata", {}) or {}
    written = []
    with _frozen_layout(figure), mpl.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42, "svg.hashsalt": _HASHSALT}):
        for fmt in formats:
            target = stem.parent / f"{stem.name}.{fmt}"
            fd, tmp = tempfile.mkstemp(dir=stem.parent, prefix=f".{stem.name}.", suffix=f".{fmt}.tmp")
            os.close(fd)
            try:
                figure.savefig(tmp, format=fmt, dpi=dpi, metadata={**_METADATA[fmt], **user_meta}, **kwargs)
                os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; figures are meant to be shared
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            written.append(target)
    return written


@contextmanager
def _frozen_layout(figure: Figure, max_passes: int = 6) -> Iterator[None]:
    """Run the figure's layout engine until the axes stop moving, then switch it off while saving.

    Constrained layout starts from the current positions, so the first draw of a new figure lands slightly
    elsewhere than the second; without this a figure saved twice (or as PDF then PNG) would differ in the last
    digits of every coordinate.
    """
    engine = figure.get_layout_engine()
    if engine is None or isinstance(engine, PlaceHolderLayoutEngine):
        yield
        return
    for _ in range(max_passes):
        before = [ax.get_position().bounds for ax in figure.axes]
        figure.draw_without_rendering()
        if [ax.get_position().bounds for ax in figure.axes] == before:
            break
    figure.set_layout_engine("none")
    try:
        yield
    finally:
        figure.set_layout_engine(engine)
