"""Figures: each function draws the elements it must (checked against pandas group means computed here), draws
the intervals a frame gives (band vertices = ci_low, ci_high) or seaborn's own errorbar, bad input names the
missing columns, a figure rebuilt from the same data is byte-identical on disk, and the 0.1 call forms (ax by
position, ci=/random_state=, the names trajectories/trajectory_grid) still draw the same with a DeprecationWarning."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import subprocess
import sys
import textwrap
import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402

from trajgeo import plotting as tp  # noqa: E402

N_POINTS = 7  # points 0..6


# ---------------------------------------------------------------------------------------------------------------
# synthetic tables with the exact column contracts of the analysis modules
# ---------------------------------------------------------------------------------------------------------------

def make_curves(n_per_sense: int = 6, seed: int = 0, n_points: int = N_POINTS, model: str | None = None):
    """senses.curves: example, point, word, sense, metric in {cos, margin}, to_sense, value."""
    rng = np.random.default_rng(seed)
    senses = {"bank": ["finance", "river"], "bass": ["fish", "music"]}
    rows, ex = [], 0
    for word, ss in senses.items():
        for s_i, sense in enumerate(ss):
            for _ in range(n_per_sense):
                for p in range(n_points):
                    margin = 0.1 * p * (1 + s_i) + rng.normal(0, 0.05)
                    rows.append((ex, p, word, sense, "margin", None, margin))
                    for t in ss:
                        rows.append((ex, p, word, sense, "cos", t, (0.5 if t == sense else 0.2) + rng.normal(0, 0.05)))
                ex += 1
    df = pd.DataFrame(rows, columns=["example", "point", "word", "sense", "metric", "to_sense", "value"])
    if model is not None:
        df["model"] = model
    return df


def make_layerwise(n_points: int = N_POINTS, n_folds: int = 3, baseline: float = 0.6, summary: bool = True):
    """probes.layerwise: point, fold, metric, value, ci_low, ci_high (fold == -1 on summary rows)."""
    rng = np.random.default_rng(1)
    rows = []
    for p in range(n_points):
        acc = rng.uniform(0.4, 1.0, n_folds)
        ctrl = rng.uniform(0.4, 0.7, n_folds)
        for f in range(n_folds):
            rows += [(p, f, "accuracy", acc[f], np.nan, np.nan), (p, f, "control_accuracy", ctrl[f], np.nan, np.nan),
                     (p, f, "majority_baseline", baseline, np.nan, np.nan)]
        if summary:
            rows += [(p, -1, "accuracy", acc.mean(), acc.min(), acc.max()),
                     (p, -1, "control_accuracy", ctrl.mean(), ctrl.min(), ctrl.max()),
                     (p, -1, "majority_baseline", baseline, np.nan, np.nan)]
    return pd.DataFrame(rows, columns=["point", "fold", "metric", "value", "ci_low", "ci_high"])


def make_coords(n_per_sense: int = 50, n_points: int = N_POINTS, seed: int = 2):
    """projector.coords: example, point, x, y, word, sense; every path starts at its word's embedding point."""
    rng = np.random.default_rng(seed)
    rows, ex = [], 0
    for w_i, (word, ss) in enumerate({"bank": ["finance", "river"], "bass": ["fish", "music"]}.items()):
        for s_i, sense in enumerate(ss):
            goal = np.array([3.0 * (1 if s_i else -1), 2.0 * w_i])
            for _ in range(n_per_sense):
                for p in range(n_points):
                    xy = np.array([0.0, 2.0 * w_i]) + goal * p / (n_points - 1) + (rng.normal(0, 0.2, 2) if p else 0)
                    rows.append((ex, p, xy[0], xy[1], word, sense))
                ex += 1
    return pd.DataFrame(rows, columns=["example", "point", "x", "y", "word", "sense"])


def make_attribution(n_examples: int = 8, n_layers: int = 5, n_heads: int = 3, seed: int = 3):
    """senses.attribution: example, word, sense, layer, component, head (-1 unless head), attribution."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(n_examples):
        sense = "finance" if e % 2 else "river"
        for layer in range(1, n_layers + 1):
            rows.append((e, "bank", sense, layer, "attn", -1, rng.normal(0.2 * layer - 0.5, 0.1)))
            rows.append((e, "bank", sense, layer, "mlp", -1, rng.normal(-0.1 * layer, 0.1)))
            for h in range(n_heads):
                rows.append((e, "bank", sense, layer, "head", h, rng.normal(0.1 * h - 0.05 * layer, 0.1)))
    return pd.DataFrame(rows, columns=["example", "word", "sense", "layer", "component", "head", "attribution"])


def make_top_tokens(n_points: int = 4, k: int = 3):
    """lens.top_tokens: point, rank, token, prob."""
    tokens = [" bank", "$", "river", "money", "\n", " loan", "shore", "x" * 20, "fund", "water", " ", "cash"]
    rows = [(p, r + 1, tokens[(p * k + r) % len(tokens)], round(0.5 / (r + 1) * (p + 1) / n_points, 3))
            for p in range(n_points) for r in range(k)]
    return pd.DataFrame(rows, columns=["point", "rank", "token", "prob"])


def make_path_metrics(seed: int = 4):
    """geometry.path_metrics: example, point, word, sense, metric, value (NaN where undefined)."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(10):
        sense = ["finance", "river"][e % 2]
        for p in range(N_POINTS):
            rows.append((e, p, "bank", sense, "step_size", np.nan if p == 0 else rng.uniform(1, 2) / p))
            rows.append((e, p, "bank", sense, "turning_angle", np.nan if p < 2 else rng.uniform(20, 90)))
            rows.append((e, p, "bank", sense, "cos_to_final", p / (N_POINTS - 1) + rng.normal(0, 0.02)))
            rows.append((e, p, "bank", sense, "norm", rng.uniform(1, 5)))
    return pd.DataFrame(rows, columns=["example", "point", "word", "sense", "metric", "value"])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(autouse=True)
def _no_show(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("plotting must never call plt.show()")
    monkeypatch.setattr(plt, "show", forbidden)


def curve_lines(ax):
    return [line for line in ax.lines if line.get_gid() == "curve"]


def line_by_colour(lines, colour):
    found = [ln for ln in lines if np.allclose(matplotlib.colors.to_rgb(ln.get_color()), colour)]
    assert len(found) == 1, f"expected one line of colour {colour}, got {len(found)}"
    return found[0]


def heatmap_values(ax):
    mesh = ax.collections[0]
    return np.ma.filled(mesh.get_array().astype(float), np.nan)


def bands(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def band_by_colour(ax, colour):
    found = [b for b in bands(ax) if np.allclose(b.get_facecolor()[0][:3], colour)]
    assert len(found) == 1, f"expected one band of colour {colour}, got {len(found)}"
    return found[0]


def band_edges(band):
    """x values of a fill_between band and, per x, its lowest and highest vertex."""
    verts = band.get_paths()[0].vertices
    xs = np.unique(verts[:, 0])
    low = np.array([verts[verts[:, 0] == x, 1].min() for x in xs])
    high = np.array([verts[verts[:, 0] == x, 1].max() for x in xs])
    return xs, low, high


@contextmanager
def no_warning():
    """Any warning inside is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def pixels(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


# ---------------------------------------------------------------------------------------------------------------
# style and files
# ---------------------------------------------------------------------------------------------------------------

def test_paper_style_sets_journal_width_palette_and_truetype_then_restores():
    before = dict(matplotlib.rcParams)
    with tp.paper_style("single"):
        assert matplotlib.rcParams["figure.figsize"][0] == pytest.approx(3.35)
        assert matplotlib.rcParams["pdf.fonttype"] == 42
        cycle = [matplotlib.colors.to_rgb(c) for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]]
        assert np.allclose(cycle, sns.color_palette("colorblind"))
        fig = tp.convergence(make_curves()).figure
        assert fig.get_size_inches()[0] == pytest.approx(3.35)
    with tp.paper_style("double"):
        assert matplotlib.rcParams["figure.figsize"][0] == pytest.approx(6.9)
    assert matplotlib.rcParams["figure.figsize"] == before["figure.figsize"]
    assert matplotlib.rcParams["pdf.fonttype"] == before["pdf.fonttype"]
    with pytest.raises(ValueError, match="single"):
        with tp.paper_style("triple"):
            pass


REBUILD = textwrap.dedent("""
    import sys
    import matplotlib
    matplotlib.use("Agg")
    sys.path.insert(0, {tests!r})
    from test_plotting import make_curves, make_coords
    from trajgeo import plotting as tp
    with tp.paper_style("single"):
        ax = tp.convergence(make_curves(), metric="margin", hue="sense")
        ax.set_title("bank \N{MINUS SIGN} convergence")
        tp.savefig(ax.figure, {out!r} + "/conv", formats=("pdf", "png", "svg"), dpi=150)
        fig = tp.path_grid(make_coords(), col="word", max_paths=20)
        tp.savefig(fig, {out!r} + "/grid", formats=("pdf", "png"), dpi=150)
""")


def test_figure_rebuilt_in_another_process_is_byte_identical(tmp_path):
    outs = []
    for i, seed in enumerate(["1", "2"]):  # different hash seeds: set/dict order must not leak into files
        out = tmp_path / f"run{i}"
        out.mkdir()
        env = {**os.environ, "PYTHONHASHSEED": seed, "MPLBACKEND": "Agg"}
        code = REBUILD.format(tests=str(Path(__file__).parent), out=str(out))
        subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == ["conv.pdf", "conv.png", "conv.svg", "grid.pdf", "grid.png"]  # no temporary files left
    for name in names:
        a, b = (outs[0] / name).read_bytes(), (outs[1] / name).read_bytes()
        assert len(a) > 1000 and a == b, name
    pdf, png = (outs[0] / "conv.pdf").read_bytes(), (outs[0] / "conv.png").read_bytes()
    assert b"CreationDate" not in pdf and b"Matplotlib" not in pdf
    assert b"/FontFile2" in pdf and b"/Type3" not in pdf  # TrueType embedded (fonttype 42), no Type 3 fonts
    assert b"Software" not in png and b"matplotlib" not in png.lower()


def test_savefig_twice_in_process_gives_same_bytes_and_strips_suffix(tmp_path):
    ax = tp.probe_accuracy(make_layerwise())
    first = tp.savefig(ax, tmp_path / "a" / "probe.pdf", formats=("pdf", "png"))  # Axes accepted, suffix dropped
    assert [p.name for p in first] == ["probe.pdf", "probe.png"]
    data = [p.read_bytes() for p in first]
    second = tp.savefig(ax.figure, tmp_path / "a" / "probe")
    assert [p.read_bytes() for p in second] == data
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["probe.pdf", "probe.png"]


def test_savefig_rejects_unknown_format_before_writing(tmp_path):
    ax = tp.convergence(make_curves())
    with pytest.raises(ValueError, match="jpeg"):
        tp.savefig(ax.figure, tmp_path / "fig", formats=("pdf", "jpeg"))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# 1. convergence
# ---------------------------------------------------------------------------------------------------------------

def test_convergence_draws_one_mean_line_and_band_per_sense():
    df = make_curves()
    ax = tp.convergence(df, metric="margin", hue="sense")
    lines = curve_lines(ax)
    senses = sorted(df["sense"].unique())
    assert len(lines) == len(senses)
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == len(senses)
    means = df[df.metric == "margin"].groupby(["sense", "point"])["value"].mean()
    palette = sns.color_palette()
    for i, sense in enumerate(senses):  # colours follow the sorted sense order
        line = line_by_colour(lines, palette[i])
        np.testing.assert_allclose(line.get_xdata(), np.arange(N_POINTS))
        np.testing.assert_allclose(line.get_ydata(), means[sense].to_numpy())
    assert set(senses) <= {t.get_text() for t in ax.get_legend().get_texts()}
    zero = [ln for ln in ax.lines if ln.get_gid() == "zero"]
    assert len(zero) == 1 and set(zero[0].get_ydata()) == {0.0}
    assert ax.get_xlabel() == "point" and "margin" in ax.get_ylabel()
    ax.figure.canvas.draw()
    assert "emb" in [t.get_text() for t in ax.get_xticklabels()]


def test_convergence_band_brackets_mean_and_is_reproducible():
    df = make_curves()
    bands = []
    for _ in range(2):
        ax = tp.convergence(df, hue="word", seed=7)
        polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(polys) == 2 and len(curve_lines(ax)) == 2  # one per word
        bands.append(np.concatenate([p.get_paths()[0].vertices for p in polys]))
        line = curve_lines(ax)[0]
        verts = polys[0].get_paths()[0].vertices
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            ys = verts[np.isclose(verts[:, 0], x), 1]
            assert ys.min() <= y <= ys.max()
    np.testing.assert_array_equal(bands[0], bands[1])


def test_convergence_cos_splits_lines_by_prototype():
    df = make_curves()
    bank = df[df.word == "bank"]
    ax = tp.convergence(bank, metric="cos", hue="sense")
    assert len(curve_lines(ax)) == 4  # 2 true senses x 2 prototypes
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"sense", "finance", "river", "prototype"} <= legend
    want = sorted(bank[bank.metric == "cos"].groupby(["sense", "to_sense", "point"])["value"].mean()
                  .groupby(level=[0, 1]).apply(lambda s: tuple(np.round(s.to_numpy(), 10))))
    got = sorted(tuple(np.round(ln.get_ydata(), 10)) for ln in curve_lines(ax))
    assert got == want


def test_convergence_relative_depth_maps_models_of_different_depth_to_unit_interval():
    df = pd.concat([make_curves(n_points=5, model="small"), make_curves(n_points=13, model="deep", seed=1)])
    ax = tp.convergence(df, hue="model", relative_depth=True, errorbar=None)
    lines = curve_lines(ax)
    assert len(lines) == 2
    assert sorted(len(ln.get_xdata()) for ln in lines) == [5, 13]
    for ln in lines:
        assert ln.get_xdata()[0] == 0.0 and ln.get_xdata()[-1] == pytest.approx(1.0)
    assert ax.get_xlabel() == "relative depth"
    with_layers = make_curves(n_points=5).assign(n_layers=8)
    ax = tp.convergence(with_layers, hue=None, relative_depth=True, errorbar=None)
    assert curve_lines(ax)[0].get_xdata()[-1] == pytest.approx(4 / 8)


def test_convergence_draws_precomputed_intervals():
    stats = pd.DataFrame({"point": np.tile(np.arange(4), 2), "sense": np.repeat(["a", "b"], 4),
                          "mean": np.r_[0.0, 0.1, 0.3, 0.6, 0.0, -0.1, -0.2, -0.4]})
    stats["ci_low"], stats["ci_high"], stats["n"] = stats["mean"] - 0.05, stats["mean"] + 0.1, 10
    ax = tp.convergence(stats, metric="margin")
    lines = curve_lines(ax)
    assert len(lines) == 2
    palette = sns.color_palette()
    for i, sense in enumerate(["a", "b"]):
        np.testing.assert_allclose(line_by_colour(lines, palette[i]).get_ydata(),
                                   stats.loc[stats.sense == sense, "mean"])
    verts = np.concatenate([c.get_paths()[0].vertices for c in ax.collections if isinstance(c, PolyCollection)])
    assert verts[:, 1].min() == pytest.approx(stats["ci_low"].min())
    assert verts[:, 1].max() == pytest.approx(stats["ci_high"].max())


def interval_frame(seed: int = 8, metric: str | None = None):
    """A frame of intervals (mean, ci_low, ci_high) with asymmetric, uneven widths, rows shuffled."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"point": np.tile(np.arange(5), 2), "sense": np.repeat(["a", "b"], 5),
                       "mean": rng.normal(size=10)})
    df["ci_low"] = df["mean"] - rng.uniform(0.01, 0.3, 10)
    df["ci_high"] = df["mean"] + rng.uniform(0.01, 0.5, 10)
    if metric is not None:
        df["metric"] = metric
    return df.sample(frac=1.0, random_state=seed)


def assert_bands_are_the_frames(ax, frame, hue="sense"):
    palette = sns.color_palette()
    assert len(bands(ax)) == frame[hue].nunique()
    for i, level in enumerate(sorted(frame[hue].unique())):
        want = frame[frame[hue] == level].sort_values("point")
        xs, low, high = band_edges(band_by_colour(ax, palette[i]))
        np.testing.assert_array_equal(xs, want["point"].to_numpy(float))
        np.testing.assert_array_equal(low, want["ci_low"].to_numpy())  # the frame's numbers, not recomputed
        np.testing.assert_array_equal(high, want["ci_high"].to_numpy())
        np.testing.assert_array_equal(line_by_colour(curve_lines(ax), palette[i]).get_ydata(), want["mean"])


def test_convergence_band_vertices_are_the_frames_ci_low_and_ci_high():
    frame = interval_frame()
    assert_bands_are_the_frames(tp.convergence(frame, metric="margin"), frame)
    hidden = tp.convergence(frame, metric="margin", errorbar=None)
    assert not bands(hidden) and len(curve_lines(hidden)) == 2  # errorbar=None hides the band, keeps the means


def test_sense_log_odds_and_path_panels_draw_the_intervals_of_the_frame():
    frame = interval_frame(metric="sense_log_odds")
    assert_bands_are_the_frames(tp.sense_log_odds(frame), frame)
    frames = {"step_size": interval_frame(1, "step_size"), "norm": interval_frame(2, "norm")}
    fig = tp.path_panels(pd.concat(frames.values()), metrics=list(frames))
    for ax, frame in zip(fig.axes, frames.values()):
        assert_bands_are_the_frames(ax, frame)


def test_intervals_from_stats_bootstrap_ci_are_drawn_as_given():
    from trajgeo import stats

    margin = make_curves().query("metric == 'margin'")
    frame = stats.bootstrap_ci(margin, by=["sense", "point"], n_boot=200)
    assert_bands_are_the_frames(tp.convergence(frame, metric="margin"), frame)


@pytest.mark.parametrize("errorbar, interval", [
    ("sd", lambda v: (v.mean() - v.std(), v.mean() + v.std())),  # pandas std: ddof=1, as seaborn's
    (("pi", 50), lambda v: (v.quantile(0.25), v.quantile(0.75))),
])
def test_raw_frame_band_is_seaborns_errorbar_passed_through(errorbar, interval):
    df = make_curves()
    ax = tp.convergence(df, metric="margin", hue="sense", errorbar=errorbar)
    margin = df[df.metric == "margin"]
    for i, sense in enumerate(sorted(margin.sense.unique())):
        per_point = margin[margin.sense == sense].groupby("point")["value"]
        want_low, want_high = zip(*(interval(v) for _, v in per_point))
        xs, low, high = band_edges(band_by_colour(ax, sns.color_palette()[i]))
        np.testing.assert_allclose(xs, np.arange(N_POINTS))
        np.testing.assert_allclose(low, want_low, rtol=1e-12)
        np.testing.assert_allclose(high, want_high, rtol=1e-12)


def test_bootstrap_band_is_seaborns_own_with_the_given_n_boot_and_seed():
    df = make_curves()
    ax = tp.convergence(df, metric="margin", hue="sense", errorbar=("ci", 90), n_boot=200, seed=3)
    _, ref = plt.subplots()
    sns.lineplot(df[df.metric == "margin"], x="point", y="value", hue="sense", hue_order=sorted(df.sense.unique()),
                 errorbar=("ci", 90), n_boot=200, seed=3, ax=ref)
    ours = [band_edges(b) for b in bands(ax)]
    theirs = [band_edges(b) for b in bands(ref)]
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
    other = tp.convergence(df, metric="margin", hue="sense", errorbar=("ci", 90), n_boot=200, seed=4)
    assert not np.array_equal(band_edges(bands(other)[0])[1], ours[0][1])  # the seed reaches the bootstrap


# ---------------------------------------------------------------------------------------------------------------
# 2. probes
# ---------------------------------------------------------------------------------------------------------------

def test_probe_accuracy_draws_probe_control_and_dashed_baseline_at_its_value():
    df = make_layerwise(baseline=0.6)
    ax = tp.probe_accuracy(df)
    by_gid = {g: [ln for ln in ax.lines if ln.get_gid() == g] for g in ("probe", "control", "majority_baseline")}
    assert {g: len(v) for g, v in by_gid.items()} == {"probe": 1, "control": 1, "majority_baseline": 1}
    summary = df[df.fold == -1].set_index(["metric", "point"])["value"]
    np.testing.assert_allclose(by_gid["probe"][0].get_ydata(), summary["accuracy"])
    np.testing.assert_allclose(by_gid["control"][0].get_ydata(), summary["control_accuracy"])
    base = by_gid["majority_baseline"][0]
    np.testing.assert_allclose(base.get_ydata(), 0.6)
    assert base.get_linestyle() == "--" and by_gid["control"][0].get_linestyle() == ":"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["probe (accuracy)", "control task",
                                                                  "majority baseline"]
    verts = ax.collections[0].get_paths()[0].vertices  # the interval of the summary rows
    assert verts[:, 1].min() == pytest.approx(df.loc[(df.fold == -1) & (df.metric == "accuracy"), "ci_low"].min())
    assert ax.get_ylabel() == "accuracy" and ax.get_xlabel() == "point"


def test_probe_accuracy_averages_folds_without_summary_rows():
    df = make_layerwise(summary=False)
    ax = tp.probe_accuracy(df)
    probe = [ln for ln in ax.lines if ln.get_gid() == "probe"][0]
    np.testing.assert_allclose(probe.get_ydata(), df[df.metric == "accuracy"].groupby("point")["value"].mean())
    assert not ax.collections  # no interval to draw


def test_probe_accuracy_with_hue_draws_a_set_per_level_in_its_colour():
    df = pd.concat([make_layerwise(baseline=0.5).assign(word="bank"), make_layerwise(baseline=0.7).assign(word="bass")])
    ax = tp.probe_accuracy(df, hue="word")
    palette = sns.color_palette()
    for i, (word, base) in enumerate([("bank", 0.5), ("bass", 0.7)]):
        mine = [ln for ln in ax.lines if np.allclose(matplotlib.colors.to_rgb(ln.get_color()), palette[i])]
        assert sorted(ln.get_gid() for ln in mine) == ["control", "majority_baseline", "probe"]
        np.testing.assert_allclose([ln for ln in mine if ln.get_gid() == "majority_baseline"][0].get_ydata(), base)
    assert {"bank", "bass", "control task", "majority baseline"} <= {t.get_text() for t in ax.get_legend().get_texts()}


def test_probe_accuracy_unknown_metric_lists_available():
    with pytest.raises(ValueError, match="macro_f1.*available.*accuracy"):
        tp.probe_accuracy(make_layerwise(), metric="macro_f1")


def test_probe_accuracy_other_scores_omit_accuracy_references_unless_asked():
    df = make_layerwise()
    df = pd.concat([df, df[df.metric == "accuracy"].assign(metric="macro_f1")])
    ax = tp.probe_accuracy(df, metric="macro_f1")
    assert [ln.get_gid() for ln in ax.lines] == ["probe"] and ax.get_ylabel() == "macro F1"
    ax = tp.probe_accuracy(df, metric="macro_f1", baseline=True)
    assert sorted(ln.get_gid() for ln in ax.lines) == ["majority_baseline", "probe"]


# ---------------------------------------------------------------------------------------------------------------
# 3. paths in a shared plane
# ---------------------------------------------------------------------------------------------------------------

def test_paths_thins_to_max_paths_stratified_with_one_arrow_each():
    df = make_coords(n_per_sense=50)
    bank = df[df.word == "bank"]
    ax = tp.paths(bank, max_paths=20, random_state=0)
    paths = [ln for ln in ax.lines if ln.get_gid() == "path"]
    arrows = [t for t in ax.texts if isinstance(t, Annotation) and t.get_gid() == "arrow"]
    assert len(paths) == 20 and len(arrows) == 20
    palette = sns.color_palette()
    colours = [tuple(np.round(matplotlib.colors.to_rgb(ln.get_color()), 6)) for ln in paths]
    assert sorted(colours.count(tuple(np.round(c, 6))) for c in palette[:2]) == [10, 10]  # both senses kept
    assert len([ln for ln in ax.lines if ln.get_gid() == "mean_path"]) == 2
    start = [c for c in ax.collections if c.get_gid() == "start"][0].get_offsets()
    end = [c for c in ax.collections if c.get_gid() == "end"][0].get_offsets()
    assert len(start) == len(end) == 20
    np.testing.assert_allclose(start, 0.0)  # every path leaves the shared embedding point (0, 0)
    last = bank[bank.point == N_POINTS - 1].set_index("example")[["x", "y"]]
    assert all((np.isclose(last.to_numpy(), e).all(axis=1)).any() for e in np.asarray(end))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["finance", "river", "embedding (start)", "last point"]


def test_paths_follow_point_order_and_thinning_is_seeded():
    df = make_coords(n_per_sense=5).sample(frac=1.0, random_state=0)  # rows shuffled
    df = df[df.word == "bass"]
    ax = tp.paths(df, max_paths=None, arrows=False, mean_path=False)
    paths = [ln for ln in ax.lines if ln.get_gid() == "path"]
    assert len(paths) == 10 and not ax.texts
    wide = df.sort_values("point").groupby("example")["x"].apply(np.asarray)
    got = sorted(tuple(np.round(ln.get_xdata(), 9)) for ln in paths)
    assert got == sorted(tuple(np.round(v, 9)) for v in wide)

    def chosen(seed):
        a = tp.paths(make_coords(), max_paths=8, random_state=seed)
        return sorted(tuple(np.round(ln.get_xydata()[-1], 9)) for ln in a.lines if ln.get_gid() == "path")
    assert chosen(3) == chosen(3)
    assert chosen(3) != chosen(4)


def test_path_grid_has_one_titled_panel_per_word():
    fig = tp.path_grid(make_coords(n_per_sense=10), col="word", max_paths=6)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert [ax.get_title() for ax in fig.axes] == ["bank", "bass"]
    senses = [["finance", "river"], ["fish", "music"]]
    for ax, mine in zip(fig.axes, senses):
        assert len([ln for ln in ax.lines if ln.get_gid() == "path"]) == 6
        assert [t.get_text() for t in ax.get_legend().get_texts()] == mine  # each word lists its own senses
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["embedding (start)", "last point"]
    three = pd.concat([make_coords(n_per_sense=3), make_coords(n_per_sense=3).assign(word="crane")])
    assert len(tp.path_grid(three, col_wrap=2).axes) == 3  # the unused fourth panel is removed


# ---------------------------------------------------------------------------------------------------------------
# 4. attribution
# ---------------------------------------------------------------------------------------------------------------

def test_attribution_heatmap_cells_are_group_means_on_a_centred_scale():
    df = make_attribution()
    ax = tp.attribution_heatmap(df)
    want = np.stack([df[df.component == c].groupby("layer")["attribution"].mean().to_numpy() for c in ("attn", "mlp")])
    np.testing.assert_allclose(heatmap_values(ax).reshape(want.shape), want)
    mesh = ax.collections[0]
    assert mesh.norm.vmin == pytest.approx(-mesh.norm.vmax) and mesh.norm.vmax == pytest.approx(np.abs(want).max())
    assert [t.get_text() for t in ax.get_yticklabels()] == ["attention", "MLP"]
    assert ax.get_xlabel() == "layer"


def test_head_heatmap_cells_are_head_by_layer_means():
    df = make_attribution()
    ax = tp.head_heatmap(df)
    heads = df[df.component == "head"]
    want = np.array([[heads[(heads["head"] == h) & (heads.layer == la)]["attribution"].mean() for la in range(1, 6)]
                     for h in range(3)])
    np.testing.assert_allclose(heatmap_values(ax).reshape(want.shape), want)
    assert ax.get_ylabel() == "head"
    with pytest.raises(ValueError, match="heads=True"):
        tp.head_heatmap(df[df.component != "head"])


# ---------------------------------------------------------------------------------------------------------------
# 5. lens
# ---------------------------------------------------------------------------------------------------------------

def test_lens_table_shows_each_token_in_its_cell_with_its_probability():
    df = make_top_tokens(n_points=4, k=3)
    ax = tp.lens_table(df)
    np.testing.assert_allclose(heatmap_values(ax).ravel(), df.sort_values(["point", "rank"])["prob"])
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 12
    assert texts[:3] == ["\N{OPEN BOX}bank", r"\$", "river"]  # visible space, no mathtext
    assert texts[4] == "\\n" and texts[10] == "\N{OPEN BOX}"
    assert texts[7].endswith("\N{HORIZONTAL ELLIPSIS}") and len(texts[7]) == 10
    assert [t.get_text() for t in ax.get_yticklabels()] == ["emb", "1", "2", "3"]
    ax.figure.canvas.draw()  # renders without a mathtext error


def test_lens_table_needs_an_example_when_there_are_several():
    df = pd.concat([make_top_tokens().assign(example=0), make_top_tokens().assign(example=5, prob=0.9)])
    with pytest.raises(ValueError, match="example="):
        tp.lens_table(df)
    ax = tp.lens_table(df, example=5)
    np.testing.assert_allclose(heatmap_values(ax), 0.9)


def test_sense_log_odds_draws_a_mean_curve_per_sense_and_a_zero_line():
    df = make_curves()
    lens = df[df.metric == "margin"].assign(metric="sense_log_odds", value=lambda d: d["value"] * 4)
    lens = pd.concat([lens, lens.assign(metric="entropy")])
    ax = tp.sense_log_odds(lens)
    lines = curve_lines(ax)
    assert len(lines) == 4
    means = lens[lens.metric == "sense_log_odds"].groupby(["sense", "point"])["value"].mean()
    for i, sense in enumerate(sorted(lens.sense.unique())):
        np.testing.assert_allclose(line_by_colour(lines, sns.color_palette()[i]).get_ydata(), means[sense])
    assert [ln.get_ydata()[0] for ln in ax.lines if ln.get_gid() == "zero"] == [0.0]


# ---------------------------------------------------------------------------------------------------------------
# 6.-8.
# ---------------------------------------------------------------------------------------------------------------

def test_transfer_heatmap_cells_are_mean_accuracy_train_by_test():
    rng = np.random.default_rng(5)
    pts = np.arange(5)
    df = pd.DataFrame([(a, b, rng.uniform()) for a in pts for b in pts for _ in range(2)],
                      columns=["train_point", "test_point", "accuracy"])
    ax = tp.transfer_heatmap(df)
    want = df.groupby(["train_point", "test_point"])["accuracy"].mean().unstack().to_numpy()
    np.testing.assert_allclose(heatmap_values(ax).reshape(5, 5), want)
    assert len(ax.texts) == 25  # small: annotated
    assert [t.get_text() for t in ax.get_xticklabels()] == ["emb", "1", "2", "3", "4"]
    assert ax.get_yticklabels()[0].get_text() == "emb"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("test point", "train point")


def test_heatmap_ticks_are_thinned_to_round_layers_when_they_would_not_fit():
    df = make_attribution(n_examples=2, n_layers=30)
    with tp.paper_style("single"):
        ax = tp.attribution_heatmap(df)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 3 <= len(labels) <= 15 and all(int(t) % 5 == 0 for t in labels)
    positions = ax.get_xticks() - 0.5  # cell centres: label "k" sits on the column of layer k
    assert [int(t) for t in labels] == [int(p) + 1 for p in positions]


def test_superposition_bars_one_bar_per_sense_and_balance_per_word():
    df = pd.DataFrame({"word": ["bass", "bank", "bank", "bass", "bass"],
                       "sense": ["music", "river", "finance", "fish", "guitar"],
                       "cosine": [0.2, 0.31, 0.45, 0.1, 0.05], "balance": [0.5, 0.69, 0.69, 0.5, 0.5]})
    ax = tp.superposition_bars(df)
    bars = [p for p in ax.patches if p.get_gid() == "sense_bar"]
    want = df.sort_values(["word", "sense"])
    np.testing.assert_allclose([b.get_height() for b in bars], want["cosine"])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(want["sense"])
    notes = [t.get_text() for t in ax.texts if t.get_gid() == "balance"]
    assert notes == ["bank\nbalance 0.69", "bass\nbalance 0.50"]
    xs = [b.get_x() for b in bars]
    assert xs[2] - xs[1] > xs[1] - xs[0]  # a gap between words


def test_superposition_bars_without_word_column_is_one_group():
    df = pd.DataFrame({"sense": ["river", "finance"], "cosine": [0.3, 0.4], "balance": [0.75, 0.75]})
    ax = tp.superposition_bars(df)
    assert [b.get_height() for b in ax.patches if b.get_gid() == "sense_bar"] == [0.4, 0.3]
    assert [t.get_text() for t in ax.texts if t.get_gid() == "balance"] == ["balance 0.75"]


def test_path_panels_one_panel_per_metric_with_group_means():
    df = make_path_metrics()
    metrics = ("step_size", "turning_angle", "cos_to_final")
    fig = tp.path_panels(df, metrics=metrics)
    assert len(fig.axes) == 3
    assert [ax.get_ylabel() for ax in fig.axes] == ["step size", "turning angle (\N{DEGREE SIGN})",
                                                    "cos to final point"]
    for ax, metric in zip(fig.axes, metrics):
        means = df[df.metric == metric].dropna().groupby(["sense", "point"])["value"].mean()
        lines = curve_lines(ax)
        assert len(lines) == 2
        for i, sense in enumerate(["finance", "river"]):
            line = line_by_colour(lines, sns.color_palette()[i])
            np.testing.assert_allclose(line.get_xdata(), means[sense].index)  # NaN points left out, not zeros
            np.testing.assert_allclose(line.get_ydata(), means[sense])
    assert all(ax.get_legend() is None for ax in fig.axes)  # one figure legend instead
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == ["finance", "river"]
    with pytest.raises(ValueError, match=r"\['curvature'\].*available"):
        tp.path_panels(df, metrics=("step_size", "curvature"))


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("func, frame, drop", [
    (tp.convergence, make_curves, ["point"]),
    (tp.convergence, make_curves, ["sense", "value"]),
    (tp.probe_accuracy, make_layerwise, ["metric"]),
    (tp.paths, make_coords, ["x", "y"]),
    (tp.path_grid, make_coords, ["word"]),
    (tp.attribution_heatmap, make_attribution, ["layer"]),
    (tp.head_heatmap, make_attribution, ["head"]),
    (tp.lens_table, make_top_tokens, ["token"]),
    (tp.sense_log_odds, make_curves, ["sense"]),
    (tp.transfer_heatmap, lambda: pd.DataFrame({"train_point": [0], "test_point": [0], "accuracy": [1.0]}),
     ["test_point"]),
    (tp.superposition_bars, lambda: pd.DataFrame({"word": ["b"], "sense": ["s"], "cosine": [0.1]}), ["cosine"]),
    (tp.path_panels, make_path_metrics, ["value"]),
])
def test_missing_columns_are_named_in_the_error(func, frame, drop):
    df = frame().drop(columns=drop)
    with pytest.raises(ValueError, match="missing column") as err:
        func(df)
    for col in drop:
        assert repr(col) in str(err.value)


def test_non_dataframe_and_unknown_metric_are_clear_errors():
    with pytest.raises(TypeError, match="DataFrame"):
        tp.convergence(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="'curvature'.*available.*'cos', 'margin'"):
        tp.convergence(make_curves(), metric="curvature")


# ---------------------------------------------------------------------------------------------------------------
# the signature rule (docs/architecture.md, rule 3) and the 0.1 call forms
# ---------------------------------------------------------------------------------------------------------------

AXES_FUNCTIONS = ["convergence", "probe_accuracy", "paths", "attribution_heatmap", "head_heatmap", "lens_table",
                  "sense_log_odds", "transfer_heatmap", "superposition_bars"]
FIGURE_FUNCTIONS = ["path_grid", "path_panels"]


@pytest.mark.parametrize("name", AXES_FUNCTIONS + FIGURE_FUNCTIONS)
def test_plot_functions_take_the_frame_first_options_by_keyword_and_ax_last(name):
    params = list(inspect.signature(getattr(tp, name)).parameters.values())
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and params[0].name.endswith("_df")
    options = [p for p in params[1:] if p.kind is not inspect.Parameter.VAR_KEYWORD]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in options)
    if name in AXES_FUNCTIONS:
        assert options[-1].name == "ax" and options[-1].default is None
    else:
        assert "ax" not in {p.name for p in options}  # a grid makes its own figure
    assert tp.__all__.count(name) == 1


def test_plotting_imports_nothing_from_trajgeo_but_the_api_helper():
    package = Path(tp.__file__).parent
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
    from_trajgeo = {m for m in imported if m.split(".")[0] == "trajgeo"}
    assert from_trajgeo - {m for m in from_trajgeo if m.startswith("trajgeo.plotting")} == {"trajgeo._api"}
    assert max(len(p.read_text().splitlines()) for p in package.glob("*.py")) <= 600


OLD_POSITIONAL = [  # name, frame, the 0.1 call's positional options (ax marks where the Axes went), the 0.2 keywords
    ("convergence", make_curves, ("cos", "word", "ax"), {"metric": "cos", "hue": "word"}),
    ("probe_accuracy", make_layerwise, ("accuracy", "ax"), {"metric": "accuracy"}),
    ("attribution_heatmap", make_attribution, ("ax",), {}),
    ("head_heatmap", make_attribution, ("ax",), {}),
    ("lens_table", make_top_tokens, ("ax",), {}),
    ("sense_log_odds", lambda: make_curves().assign(metric="sense_log_odds"), ("ax",), {}),
    ("transfer_heatmap", lambda: pd.DataFrame({"train_point": [0, 0, 1, 1], "test_point": [0, 1, 0, 1],
                                               "accuracy": [0.9, 0.5, 0.6, 0.8]}), ("ax",), {}),
    ("superposition_bars", lambda: pd.DataFrame({"sense": ["a", "b"], "cosine": [0.3, 0.1]}), ("ax",), {}),
    ("trajectories", lambda: make_coords(n_per_sense=4), ("ax", "word"), {"hue": "word"}),
]


@pytest.mark.parametrize("name, frame, old, new", OLD_POSITIONAL, ids=[c[0] for c in OLD_POSITIONAL])
def test_old_positional_calls_warn_and_draw_what_the_keyword_form_draws(name, frame, old, new):
    df = frame()
    _, ax_old = plt.subplots()
    args = [ax_old if a == "ax" else a for a in old]
    with pytest.warns(DeprecationWarning) as caught:
        got = getattr(tp, name)(df, *args)
    assert any("by position" in str(w.message) for w in caught)
    assert got is ax_old  # drawn where the 0.1 call said
    _, ax_new = plt.subplots()
    with no_warning():
        getattr(tp, "paths" if name == "trajectories" else name)(df, **new, ax=ax_new)
    np.testing.assert_array_equal(pixels(ax_old.figure), pixels(ax_new.figure))


def test_path_panels_old_positional_metrics_warn_and_draw_the_same():
    df = make_path_metrics()
    with pytest.warns(DeprecationWarning, match="metrics"):
        old = tp.path_panels(df, ("step_size", "norm"))
    new = tp.path_panels(df, metrics=("step_size", "norm"))
    assert [a.get_ylabel() for a in old.axes] == ["step size", "norm"]
    np.testing.assert_array_equal(pixels(old), pixels(new))


def test_old_names_trajectories_and_trajectory_grid_warn_and_are_paths_and_path_grid():
    df = make_coords(n_per_sense=6)
    with pytest.warns(DeprecationWarning, match="plotting.trajectories is deprecated.*plotting.paths"):
        old = tp.trajectories(df, max_paths=10)
    np.testing.assert_array_equal(pixels(old.figure), pixels(tp.paths(df, max_paths=10).figure))
    with pytest.warns(DeprecationWarning) as caught:
        old = tp.trajectory_grid(df, "word", max_paths=5)  # col by position, as in 0.1
    messages = [str(w.message) for w in caught]
    assert any("trajectory_grid is deprecated" in m and "path_grid" in m for m in messages)
    assert any("passing col by position" in m for m in messages)
    np.testing.assert_array_equal(pixels(old), pixels(tp.path_grid(df, col="word", max_paths=5)))
    assert tp.trajectories.__name__ == "trajectories" and "paths" in tp.trajectories.__doc__


@pytest.mark.parametrize("name, frame, extra", [
    ("convergence", make_curves, {"metric": "margin"}),
    ("sense_log_odds", lambda: make_curves().assign(metric="sense_log_odds"), {}),
    ("path_panels", make_path_metrics, {"metrics": ("step_size", "norm")}),
])
def test_old_ci_and_random_state_map_onto_errorbar_n_boot_and_seed(name, frame, extra):
    df, draw = frame(), getattr(tp, name)

    def edges(result):
        axes = result.axes if isinstance(result, matplotlib.figure.Figure) else [result]
        return [e for ax in axes for b in bands(ax) for e in band_edges(b)]

    with pytest.warns(DeprecationWarning) as caught:
        old = edges(draw(df, **extra, ci=0.9, n_boot=150, random_state=3))
    messages = " ".join(str(w.message) for w in caught)
    assert "'ci' is deprecated" in messages and "errorbar=('ci', 90.0)" in messages
    assert "'random_state' is deprecated" in messages and "'seed'" in messages
    new = edges(draw(df, **extra, errorbar=("ci", 90), n_boot=150, seed=3))
    assert len(old) == len(new) > 0
    for a, b in zip(old, new):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(old, edges(draw(df, **extra, errorbar=("ci", 90), n_boot=150, seed=4)))
    with pytest.warns(DeprecationWarning, match="errorbar=None"):
        assert edges(draw(df, **extra, ci=None)) == []  # ci=None drew no band, as errorbar=None does
    with pytest.raises(TypeError, match="both 'ci'"):
        draw(df, **extra, ci=0.9, errorbar="sd")
    with pytest.raises(TypeError, match="both 'random_state'"):
        draw(df, **extra, random_state=1, seed=2)


def test_figure_scripts_draw_without_deprecation_warnings(tmp_path, monkeypatch):
    folder = Path(__file__).resolve().parents[1] / "figures"
    monkeypatch.syspath_prepend(str(folder))

    def script(name):
        spec = importlib.util.spec_from_file_location(f"_figure_script_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    margin = make_curves().query("metric == 'margin'").drop(columns=["metric", "to_sense"])
    cue = pd.concat([margin.assign(model=m, cue_position=np.where(margin.example % 2, "before", "after"))
                     for m in ("causal", "encoder")])
    with no_warning():
        fig = script("cue_position").draw(cue, tp)
    ax = fig.axes[0]
    assert len(curve_lines(ax)) == 4 and ax.get_xlabel() == "relative depth"  # 2 models x 2 cue positions
    assert {ln.get_linestyle() for ln in curve_lines(ax)} == {"-", "--"}

    cws = script("coarsewsd20")
    per_word = margin.groupby(["word", "point"], as_index=False)["value"].mean().rename(columns={"value": "margin"})
    curves = pd.concat([per_word.assign(model="m1", n_layers=N_POINTS - 1),
                        per_word.assign(model="m2", n_layers=2 * (N_POINTS - 1))])
    rng = np.random.default_rng(4)
    probes = pd.DataFrame([dict(word=w, model=m, point=p, fold=-1, metric="balanced_accuracy",
                                value=rng.uniform(0.5, 1.0), null_mean=0.5, null_q95=0.55 + 0.01 * k,
                                null_fwer=0.6 + 0.1 * k + 0.02 * ("bass" == w))
                           for k, m in enumerate(("m1", "m2")) for w in ("bank", "bass")
                           for p in range(N_POINTS * (1 + k))])
    summary = pd.DataFrame([dict(word=w, model=m, status="done", null_fwer=0.6 + 0.1 * k,
                                 peak_balanced_accuracy=0.9 - 0.1 * k - 0.05 * i, surface_balanced_accuracy=0.55)
                            for k, m in enumerate(("m1", "m2")) for i, w in enumerate(("bank", "bass"))])
    (tmp_path / "coarsewsd20").mkdir()
    probes.to_parquet(tmp_path / "coarsewsd20" / "probes.parquet")
    summary.to_parquet(tmp_path / "coarsewsd20" / "summary.parquet")
    monkeypatch.setattr(cws, "RESULTS", tmp_path)
    with no_warning():
        fig = cws.draw(curves, tp)
    left, middle, right = fig.axes
    assert len(curve_lines(left)) == len(curve_lines(middle)) == 2  # one line per model
    assert max(ln.get_xdata()[-1] for ln in curve_lines(left)) == pytest.approx(1.0)
    assert min(ln.get_xdata()[-1] for ln in curve_lines(left)) == pytest.approx(0.5)
    assert not [ln for ln in middle.lines if ln.get_gid() == "zero"] and middle.get_legend() is None
    # the dashed family-wise thresholds are each model's mean over words (m1: 0.61, m2: 0.71)
    dashed = sorted(ln.get_ydata()[0] for ln in middle.lines if ln.get_linestyle() == "--")
    np.testing.assert_allclose(dashed, [0.61, 0.71])
    # right: each word's peak (filled) per model, in the summary's order of words
    peaks = sorted(tuple(np.round(ln.get_xdata(), 6)) for ln in right.lines if ln.get_markerfacecolor() != "none")
    assert peaks == [(0.8, 0.75), (0.9, 0.85)]
    assert [t.get_text() for t in right.get_yticklabels()] == ["bank", "bass"]
    # another folder (as --tables gives it) is read instead of RESULTS
    other = tmp_path / "elsewhere"
    other.mkdir()
    summary.assign(peak_balanced_accuracy=0.95).to_parquet(other / "summary.parquet")
    probes.to_parquet(other / "probes.parquet")
    with no_warning():
        right = cws.draw(curves, tp, folder=other).axes[2]
    assert {x for ln in right.lines if ln.get_markerfacecolor() != "none" for x in ln.get_xdata()} == {0.95}
