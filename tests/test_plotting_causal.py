"""Causal figures draw what the interventions' frames say: heatmap cells equal per-pair-then-pair means (computed
here with plain loops), lines equal the frame's values, bands equal ci_low/ci_high, stars sit on the cells whose
p_fwer is below alpha, null markers sit at null_fwer; frames without a needed column are refused naming it."""

from __future__ import annotations

import inspect

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from trajgeo import plotting as tp  # noqa: E402
from trajgeo.plotting._causal import trace_matrix  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


# ------------------------------------------------------------------ frames with the interventions' contracts
def make_patch(n_pairs: int = 6, n_points: int = 4, seed: int = 0, site: str = "resid") -> pd.DataFrame:
    """patch(): pair, point|layer, position, site, effect, normalized_effect, direction, kind, word, role.
    Pairs have different lengths (several "other" positions), so the per-pair averaging matters."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_pairs):
        kind = "flip" if p % 2 == 0 else "same"
        n_tok = 4 + p % 3
        roles = ["other"] * n_tok
        roles[1], roles[-1] = "cue", "target"
        for direction in ("denoise", "noise"):
            for u in range(n_points) if site == "resid" else range(1, n_points + 1):
                for pos, role in enumerate(roles):
                    e = rng.normal(1.0 if (kind == "flip" and role == "cue") else 0.0, 0.1)
                    rows.append({"pair": p, ("point" if site == "resid" else "layer"): u, "position": pos,
                                 "site": site, "effect": e, "normalized_effect": e / 2, "direction": direction,
                                 "kind": kind, "word": "bank", "role": role})
    return pd.DataFrame(rows)


def loop_trace(df: pd.DataFrame, unit: str, value: str = "effect", kind: str = "flip",
               direction: str = "denoise") -> dict:
    """{(unit, role): mean over pairs of the pair's mean} written with loops."""
    out = {}
    sub = df[(df["kind"] == kind) & (df["direction"] == direction)]
    for u in sorted(sub[unit].unique()):
        for role in ("cue", "other", "target"):
            per_pair = []
            for p in sorted(sub["pair"].unique()):
                v = sub[(sub[unit] == u) & (sub["role"] == role) & (sub["pair"] == p)][value].to_numpy()
                if len(v):
                    per_pair.append(sum(v) / len(v))
            out[(u, role)] = sum(per_pair) / len(per_pair)
    return out


def heatmap_values(ax):
    return np.ma.filled(ax.collections[0].get_array().astype(float), np.nan)


def stars(ax):
    return sorted((t.get_position()[0], t.get_position()[1]) for t in ax.texts if t.get_gid() == "significant")


def make_sources(n_layers: int = 3, n_heads: int = 2, with_null: bool = True) -> pd.DataFrame:
    """SourceAttribution.summary by relative_position: layer, head, relative_position, value, null..., n."""
    rng = np.random.default_rng(3)
    rows = []
    for la in range(1, n_layers + 1):
        for h in range(n_heads):
            for rel in (-3, -2, -1, 0):
                v = rng.normal(0.0, 0.1) + (1.0 if (la, h, rel) == (2, 1, -2) else 0.0)
                rows.append({"layer": la, "head": h, "relative_position": rel, "value": v,
                             "null_mean": 0.0, "null_q95": 0.2, "null_fwer": 0.4 + 0.01 * la,
                             "p_value": 0.01 if v > 0.5 else 0.5, "p_fwer": 0.02 if v > 0.5 else 0.9, "n": 5})
    df = pd.DataFrame(rows)
    return df if with_null else df[["layer", "head", "relative_position", "value", "n"]]


def make_erase(words=("bank",), layer: int = 2, n_points: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for w in words:
        for cond, rank in (("none", 0.0), ("leace", 1.0), ("leace_permuted", 1.0), ("random", 1.0)):
            for p in range(layer, n_points):
                v = rng.uniform(0.4, 1.0)
                rows.append({"word": w, "layer": layer, "point": p, "condition": cond, "metric": "separability",
                             "value": v, "ci_low": v - 0.1, "ci_high": v + 0.05, "rank_erased": rank})
                rows.append({"word": w, "layer": layer, "point": p, "condition": cond, "metric": "lm_loss",
                             "value": v + 3, "ci_low": v + 2.9, "ci_high": v + 3.1, "rank_erased": rank})
    return pd.DataFrame(rows)


def make_steer(words=("bank",)) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rows = []
    for w in words:
        for cond in ("steer", "random"):
            for a in (0.0, 1.0, 2.0, 4.0):
                for metric in ("flip_rate", "final_margin"):
                    v = rng.uniform(0, 1)
                    rows.append({"word": w, "layer": 3, "alpha": a, "condition": cond, "metric": metric,
                                 "value": v, "ci_low": v - 0.2, "ci_high": v + 0.1, "n": 10})
    return pd.DataFrame(rows)


def make_skip() -> pd.DataFrame:
    rows = []
    for w, base in (("bank", 0.9), ("bass", 0.8)):
        for (a, b) in ((0, 0), (1, 2), (2, 3), (1, 3)):
            for metric, off in (("final_separability", 0.0), ("lm_loss", 3.0)):
                v = base - 0.1 * (b - a) + off + (0.01 if w == "bass" else 0.0) * a
                rows.append({"word": w, "start": a, "stop": b, "metric": metric, "value": v,
                             "ci_low": v - 0.05, "ci_high": v + 0.05})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ causal trace
@pytest.mark.parametrize("site,unit", [("resid", "point"), ("attn", "layer")])
def test_causal_trace_cells_are_per_pair_then_pair_means_with_embedding_at_the_bottom(site, unit):
    df = make_patch(site=site)
    ax = tp.causal_trace(df, value="effect", by="role")
    want = loop_trace(df, unit)
    units = sorted(df[unit].unique())
    mat = np.array([[want[(u, r)] for r in ("cue", "other", "target")] for u in units])
    np.testing.assert_allclose(heatmap_values(ax).reshape(mat.shape), mat, rtol=1e-12)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cue", "other", "target"]
    assert ax.get_ylim()[0] < ax.get_ylim()[1]  # row 0 (the embedding or layer 1) at the bottom
    assert ax.get_ylabel() == unit
    assert (ax.get_yticklabels()[0].get_text() == "emb") is (unit == "point")  # point 0 is the embedding
    mesh = ax.collections[0]
    assert mesh.norm.vmin == pytest.approx(-mesh.norm.vmax) and mesh.norm.vmax == pytest.approx(np.abs(mat).max())


def test_causal_trace_null_and_difference_are_the_same_sense_pairs_and_flip_minus_same():
    df = make_patch()
    flip = loop_trace(df, "point")
    same = loop_trace(df, "point", kind="same")
    noise = loop_trace(df, "point", kind="same", direction="noise", value="normalized_effect")
    keys = sorted(flip)
    ax = tp.causal_trace(df, kind="same")
    got = heatmap_values(ax).reshape(-1)
    np.testing.assert_allclose(got, [same[k] for k in sorted(keys, key=lambda k: (k[0], k[1]))])
    ax = tp.causal_trace(df, kind="difference")
    np.testing.assert_allclose(heatmap_values(ax).reshape(-1), [flip[k] - same[k] for k in keys])
    ax = tp.causal_trace(df, kind="same", direction="noise", value="normalized_effect")
    np.testing.assert_allclose(heatmap_values(ax).reshape(-1), [noise[k] for k in keys])
    # the cue column carries the planted flip effect; the null does not
    m = trace_matrix(df)
    assert (m["cue"] > 0.6).all() and (trace_matrix(df, kind="same")["cue"].abs() < 0.4).all()


def test_causal_trace_stars_exactly_the_cells_below_alpha():
    df = make_patch()
    contrast = pd.DataFrame([{"direction": "denoise", "point": p, "role": r,
                              "p_fwer": 0.01 if (r == "cue" and p in (1, 3)) else 0.5}
                             for p in range(4) for r in ("cue", "other", "target")])
    ax = tp.causal_trace(df, contrast=contrast, alpha=0.05)
    assert stars(ax) == [(0.5, 1.5), (0.5, 3.5)]  # column cue (0), rows point 1 and 3
    ax = tp.causal_trace(df, contrast=contrast, alpha=0.001)
    assert stars(ax) == []


def test_causal_trace_head_sites_have_layer_dot_head_rows():
    df = make_patch(site="attn").assign(site="head")
    df = pd.concat([df.assign(head=0), df.assign(head=1, effect=df["effect"] + 10)], ignore_index=True)
    m = trace_matrix(df)
    assert list(m.index) == [f"{la}.{h}" for la in range(1, 5) for h in (0, 1)]
    np.testing.assert_allclose(m.loc["2.1"].to_numpy() - m.loc["2.0"].to_numpy(), 10.0)


def test_causal_trace_refuses_frames_without_its_columns_and_unknown_levels():
    df = make_patch()
    with pytest.raises(ValueError, match=r"missing column\(s\) \['role'\]"):
        tp.causal_trace(df.drop(columns="role"))
    with pytest.raises(ValueError, match="'point' or 'layer'"):
        tp.causal_trace(df.drop(columns="point"))
    with pytest.raises(ValueError, match="direction == 'both'"):
        tp.causal_trace(df, direction="both")
    with pytest.raises(ValueError, match="kind must be one of"):
        tp.causal_trace(df, kind="flipped")
    with pytest.raises(ValueError, match="needs a 'kind' column"):
        tp.causal_trace(df.drop(columns="kind"), kind="difference")
    with pytest.raises(TypeError, match="expected a pandas DataFrame"):
        tp.causal_trace(df.to_dict())


# ------------------------------------------------------------------ source attribution
def test_source_map_cells_are_sums_over_heads_and_stars_mark_layers_with_a_significant_head():
    df = make_sources()
    ax = tp.source_map(df, by="relative_position")
    want = np.array([[df[(df.layer == la) & (df.relative_position == r)]["value"].sum() for r in (-3, -2, -1, 0)]
                     for la in (1, 2, 3)])
    np.testing.assert_allclose(heatmap_values(ax).reshape(want.shape), want)
    assert stars(ax) == [(1.5, 1.5)]  # relative position -2 (column 1), layer 2 (row 1)
    ax = tp.source_map(make_sources(with_null=False))
    assert stars(ax) == []


def test_source_map_by_is_cue_orders_cue_first():
    df = make_sources().assign(is_cue=lambda d: d["relative_position"] == -2)
    summary = df.groupby(["layer", "head", "is_cue"], as_index=False)["value"].sum()
    ax = tp.source_map(summary, by="is_cue")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cue", "other"]
    want = np.array([[summary[(summary.layer == la) & (summary.is_cue == c)]["value"].sum() for c in (True, False)]
                     for la in (1, 2, 3)])
    np.testing.assert_allclose(heatmap_values(ax).reshape(want.shape), want)


def test_source_top_heads_bars_are_the_largest_values_with_their_thresholds():
    df = make_sources()
    ax = tp.source_top_heads(df, by="relative_position", n=4)
    top = df.sort_values("value", ascending=False).head(4)
    bars = [p for p in ax.patches if p.get_gid() == "source_bar"]
    widths = [b.get_width() for b in sorted(bars, key=lambda b: -b.get_y())]  # top bar first
    np.testing.assert_allclose(widths, top["value"].to_numpy())
    marker = next(ln for ln in ax.lines if ln.get_gid() == "null_fwer")
    np.testing.assert_allclose(marker.get_xdata(), top["null_fwer"].to_numpy())
    top_label = max(ax.get_yticklabels(), key=lambda t: t.get_position()[1]).get_text()
    assert top_label == "L2 H1 \N{LEFTWARDS ARROW} -2"  # the planted source, on top
    with pytest.raises(ValueError, match=r"missing column\(s\) \['null_fwer'\]"):
        tp.source_top_heads(make_sources(with_null=False), by="relative_position")


# ------------------------------------------------------------------ erasure and steering curves
def _line(ax, cond):
    return next(ln for ln in ax.lines if ln.get_gid() == f"condition:{cond}")


def _band(ax, cond):
    return next(c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() == f"condition:{cond}")


def test_erasure_curves_lines_and_bands_are_the_frame_for_one_word():
    df = make_erase()
    ax = tp.erasure_curves(df, metric="separability")
    for cond in ("none", "leace", "leace_permuted", "random"):
        g = df[(df.condition == cond) & (df.metric == "separability")].sort_values("point")
        ln = _line(ax, cond)
        np.testing.assert_allclose(ln.get_xdata(), g["point"])
        np.testing.assert_allclose(ln.get_ydata(), g["value"])
        ys = _band(ax, cond).get_paths()[0].vertices[:, 1]
        assert np.isclose(ys.min(), g["ci_low"].min()) and np.isclose(ys.max(), g["ci_high"].max())
        for lo, hi in zip(g["ci_low"], g["ci_high"]):
            assert np.isclose(ys, lo).any() and np.isclose(ys, hi).any()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "none", "leace (rank 1)", "leace_permuted (rank 1)", "random (rank 1)"]
    assert [ln.get_xdata()[0] for ln in ax.lines if ln.get_gid() == "erased_point"] == [2]


def test_erasure_curves_several_words_are_means_without_bands_and_word_selects_one():
    df = make_erase(words=("bank", "bass"))
    ax = tp.erasure_curves(df, metric="lm_loss")
    g = df[(df.condition == "leace") & (df.metric == "lm_loss")].groupby("point")["value"].mean()
    np.testing.assert_allclose(_line(ax, "leace").get_ydata(), g.to_numpy())
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    ax = tp.erasure_curves(df, metric="lm_loss", word="bass")
    g = df[(df.condition == "leace") & (df.metric == "lm_loss") & (df.word == "bass")].sort_values("point")
    np.testing.assert_allclose(_line(ax, "leace").get_ydata(), g["value"])
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 4


def test_steering_curves_are_the_frame_against_alpha():
    df = make_steer()
    ax = tp.steering_curves(df, metric="final_margin")
    for cond in ("steer", "random"):
        g = df[(df.condition == cond) & (df.metric == "final_margin")].sort_values("alpha")
        np.testing.assert_allclose(_line(ax, cond).get_xdata(), g["alpha"])
        np.testing.assert_allclose(_line(ax, cond).get_ydata(), g["value"])
        ys = _band(ax, cond).get_paths()[0].vertices[:, 1]
        for lo, hi in zip(g["ci_low"], g["ci_high"]):
            assert np.isclose(ys, lo).any() and np.isclose(ys, hi).any()
    assert any(ln.get_gid() == "zero" for ln in ax.lines)


def test_curves_refuse_missing_columns_metrics_and_words():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['ci_high'\]"):
        tp.steering_curves(make_steer().drop(columns="ci_high"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['point'\]"):
        tp.erasure_curves(make_erase().drop(columns="point"))
    with pytest.raises(ValueError, match="metric == 'accuracy'"):
        tp.erasure_curves(make_erase(), metric="accuracy")
    with pytest.raises(ValueError, match="word == 'crane'"):
        tp.steering_curves(make_steer(), word="crane")


# ------------------------------------------------------------------ skipped blocks
def test_skip_table_cells_are_the_frame_values_in_range_order():
    df = make_skip()
    ax = tp.skip_table(df, metric="final_separability")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["none", "1", "1\N{EN DASH}2", "2"]
    ranges = [(0, 0), (1, 2), (1, 3), (2, 3)]
    want = np.array([[df[(df.word == w) & (df.start == a) & (df.stop == b) & (df.metric == "final_separability")]
                      ["value"].item() for a, b in ranges] for w in ("bank", "bass")])
    np.testing.assert_allclose(heatmap_values(ax).reshape(want.shape), want)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['stop'\]"):
        tp.skip_table(df.drop(columns="stop"))


# ------------------------------------------------------------------ the signature rule
@pytest.mark.parametrize("name", ["causal_trace", "source_map", "source_top_heads", "condition_curves",
                                  "erasure_curves", "steering_curves", "skip_table"])
def test_causal_plots_take_the_frame_first_options_by_keyword_and_ax_last(name):
    params = list(inspect.signature(getattr(tp, name)).parameters.values())
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and params[0].name.endswith("_df")
    options = params[1:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in options)
    assert options[-1].name == "ax" and options[-1].default is None
    assert tp.__all__.count(name) == 1


def test_causal_plots_draw_on_the_given_axes():
    fig, axes = plt.subplots(1, 3)
    assert tp.causal_trace(make_patch(), ax=axes[0]) is axes[0]
    assert tp.erasure_curves(make_erase(), ax=axes[1]) is axes[1]
    assert tp.skip_table(make_skip(), ax=axes[2]) is axes[2]
