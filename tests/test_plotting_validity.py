"""Figures read against their null: what is drawn is what the frame holds; the palette's colours stay apart;
labels do not overlap."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import seaborn as sns  # noqa: E402

from trajgeo import plotting  # noqa: E402

WORDS = ["bank", "bass", "bat", "crane", "match", "pitcher", "plant", "seal", "spring", "star", "tie", "trunk"]


def _lab(rgb) -> np.ndarray:
    """sRGB (0-1) to CIELAB (D65), written out from the CIE definitions (an independent reference)."""
    rgb = np.asarray(rgb, float)
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def _min_distance(colours) -> float:
    lab = _lab(colours)
    return min(np.linalg.norm(a - b) for a, b in itertools.combinations(lab, 2))


def test_first_15_categorical_colours_are_pairwise_distinct_in_cielab():
    colours = plotting.categorical_palette(15)
    assert len(set(plotting.CATEGORICAL)) == len(plotting.CATEGORICAL) >= 15
    assert _min_distance(colours) > 25
    # the threshold separates: the husl hues the 12 words fell back to have near-identical neighbours
    assert _min_distance(sns.color_palette("husl", 12)) < 20
    assert _min_distance(np.asarray(colours)) == pytest.approx(_min_distance(colours))


def test_paper_style_trajgeo_palette_is_the_colour_cycle_and_gives_12_words_distinct_curves():
    with plotting.paper_style(palette="trajgeo"):
        cycle = [matplotlib.colors.to_rgb(c) for c in plt.rcParams["axes.prop_cycle"].by_key()["color"]]
        assert np.allclose(cycle, plotting.categorical_palette())
        df = pd.DataFrame([{"word": w, "point": p, "example": e, "sense": "a", "metric": "margin", "value": p + i}
                           for i, w in enumerate(WORDS) for p in range(3) for e in range(2)])
        ax = plotting.convergence(df, metric="margin", hue="word", errorbar=None)
        colours = [matplotlib.colors.to_rgb(line.get_color()) for line in ax.get_lines() if len(line.get_xdata()) == 3]
        plt.close(ax.figure)
    assert len(colours) == 12 and _min_distance(colours) > 25


def _curve(n_points: int = 8, onset: int = 4) -> pd.DataFrame:
    p = np.arange(n_points)
    value = np.where(p >= onset, 0.9, 0.5)
    return pd.DataFrame({"point": p, "value": value, "null_mean": 0.5, "null_q95": 0.5 + 0.02 * p,
                         "null_fwer": 0.75})


def test_null_band_draws_the_band_threshold_and_marks_exactly_the_points_above_it():
    df = _curve()
    ax = plotting.null_band(df)
    band = next(c for c in ax.collections if c.get_gid() == "null_band")
    verts = band.get_paths()[0].vertices
    # the band's upper edge is the null's 95% quantile, its lower edge the null mean
    for p, lo, hi in zip(df["point"], df["null_mean"], df["null_q95"]):
        ys = verts[np.isclose(verts[:, 0], p), 1]
        assert ys.min() == pytest.approx(lo) and ys.max() == pytest.approx(hi)
    lines = {ln.get_gid(): ln for ln in ax.get_lines()}
    assert np.allclose(lines["null_fwer"].get_ydata(), 0.75)
    np.testing.assert_array_equal(lines["curve"].get_ydata(), df["value"])
    np.testing.assert_array_equal(lines["above_fwer"].get_xdata(), df.loc[df["value"] > 0.75, "point"])
    plt.close(ax.figure)


def test_null_band_without_points_above_the_threshold_marks_none():
    df = _curve().assign(value=0.6)
    ax = plotting.null_band(df)
    assert "above_fwer" not in {ln.get_gid() for ln in ax.get_lines()}
    plt.close(ax.figure)


def test_separability_grid_has_one_panel_per_word_with_its_baseline_and_chance():
    df = pd.concat([_curve().assign(word=w) for w in WORDS[:5]], ignore_index=True)
    baseline = {w: 0.5 + 0.05 * i for i, w in enumerate(WORDS[:5])}
    fig = plotting.separability_grid(df, baseline=baseline, chance={w: 0.5 for w in WORDS[:5]}, ncols=3)
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert sorted(ax.get_title() for ax in axes) == sorted(WORDS[:5])
    for ax in axes:
        lines = {ln.get_gid(): ln for ln in ax.get_lines()}
        assert np.allclose(lines["baseline"].get_ydata(), baseline[ax.get_title()])
        assert np.allclose(lines["chance"].get_ydata(), 0.5)
    plt.close(fig)


def test_reference_heatmap_is_the_mean_over_words_with_point_on_x():
    rows = []
    rng = np.random.default_rng(0)
    for w in ["a", "b"]:
        for r in range(4):
            for p in range(4):
                rows.append({"word": w, "point": p, "reference": r, "metric": "margin", "value": rng.normal()})
                rows.append({"word": w, "point": p, "reference": r, "metric": "accuracy", "value": 9.0})
    df = pd.DataFrame(rows)
    ax = plotting.reference_heatmap(df)
    mesh = next(c for c in ax.collections if c.get_gid() == "reference_matrix")
    want = df[df["metric"] == "margin"].groupby(["reference", "point"])["value"].mean().unstack("point").to_numpy()
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(4, 4), want)
    assert ax.get_xlabel() == "point"
    plt.close(ax.figure)


def _overlaps(texts, renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_text() and t.get_visible()]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def test_against_null_labels_each_word_once_without_overlap_and_draws_its_null():
    df = pd.DataFrame({"word": np.repeat(WORDS, 2), "sense": ["x", "y"] * 12,
                       "balance": np.repeat(np.linspace(0.7, 0.99, 12), 2),
                       "null_mean": 0.8, "null_q95": np.repeat(np.linspace(0.85, 0.95, 12), 2)})
    with plotting.paper_style("single"):
        ax = plotting.against_null(df, y="word", value="balance")
        fig = ax.figure
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == sorted(WORDS)
        assert _overlaps(ax.get_yticklabels(), fig.canvas.get_renderer()) == []
        dots = next(ln for ln in ax.get_lines() if ln.get_gid() == "observed")
        np.testing.assert_allclose(dots.get_xdata(), df.drop_duplicates("word").set_index("word").loc[labels, "balance"])
        null = next(c for c in ax.collections if c.get_gid() == "null")
        segs = null.get_segments()
        np.testing.assert_allclose([s[1][0] for s in segs],
                                   df.drop_duplicates("word").set_index("word").loc[labels, "null_q95"])
        plt.close(fig)


def test_report_superposition_figure_of_12_words_has_no_overlapping_text():
    from trajgeo.report.drawing import FIGURES

    df = pd.DataFrame({"word": np.repeat(WORDS, 2), "sense": ["x", "y"] * 12, "cosine": 0.5,
                       "balance": np.repeat(np.linspace(0.7, 0.99, 12), 2),
                       "null_mean": 0.8, "null_q95": 0.9, "null_fwer": 0.9, "p_value": 0.5, "p_fwer": 0.5})
    with plotting.paper_style("double", palette="trajgeo"):
        fig = FIGURES["superposition"][1]({"superposition": df}, plotting)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = [t for ax in fig.axes for t in [*ax.get_yticklabels(), *ax.texts, ax.title]]
        assert len([t for t in texts if t.get_text() in WORDS]) == 12
        assert _overlaps(texts, renderer) == []
        plt.close(fig)


def test_threshold_heatmap_marks_exactly_the_cells_above_their_threshold():
    df = pd.DataFrame({"word": np.repeat(["a", "b"], 3), "point": [0, 1, 2] * 2,
                       "value": [0.1, 0.5, 0.9, -0.2, 0.3, 0.2], "null_fwer": 0.4})
    ax = plotting.threshold_heatmap(df)
    img = next(im for im in ax.images if im.get_gid() == "heatmap")
    np.testing.assert_allclose(np.asarray(img.get_array()), [[0.1, 0.5, 0.9], [-0.2, 0.3, 0.2]])
    dots = next(ln for ln in ax.get_lines() if ln.get_gid() == "above_threshold")
    assert sorted(zip(dots.get_ydata(), dots.get_xdata())) == [(0, 1), (0, 2)]
    plt.close(ax.figure)
