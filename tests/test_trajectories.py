"""The Trajectories container: construction, labels and groups, subsetting, concat, long frames, the store, identity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import trajgeo as tg
from trajgeo.trajectories import StoreWriter, as_trajectories

TEXTS = [
    "i sat by the river bank and watched the water flow past the muddy shore",
    "she went to the bank to deposit her salary into a savings account",
    "the bank raised its interest rates on every loan this spring",
    "fishermen lined the grassy bank of the slow brown river at dawn",
]
N_LAYERS, D, N_HEADS = 3, 5, 2


def _f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)  # what extraction writes


def _make(n: int = 6, seed: int = 0, first_id: int = 0) -> tg.Trajectories:
    """Random trajectories with every kind of array a real extraction gives (components, heads, aux)."""
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({
        "example": np.arange(first_id, first_id + n),
        "text": [TEXTS[i % 4] for i in range(n)],
        "word": ["bank"] * (n - 1) + ["spring"],
        "sense": ["river", "finance", "finance", "river", "river", "season"][:n] + ["x"] * max(0, n - 6),
        "group": [f"s{i // 2}" for i in range(n)],
    })
    return tg.Trajectories(
        rng.normal(size=(n, N_LAYERS + 1, D)).astype(np.float32),
        meta,
        components={"attn": _f32(rng, n, N_LAYERS, D), "mlp": _f32(rng, n, N_LAYERS, D),
                    "heads": _f32(rng, n, N_LAYERS, N_HEADS, D)},
        aux={"block_input": _f32(rng, n, D)},
        model_info={"name": "toy", "n_layers": N_LAYERS, "d_model": D},
    )


@pytest.fixture
def traj() -> tg.Trajectories:
    return _make()


def _assert_same(a: tg.Trajectories, b: tg.Trajectories) -> None:
    """Bit for bit: states, every component and aux array, meta, points."""
    np.testing.assert_array_equal(np.asarray(a.states), np.asarray(b.states))
    assert set(a.components) == set(b.components) and set(a.aux) == set(b.aux)
    for k in a.components:
        np.testing.assert_array_equal(np.asarray(a.components[k]), np.asarray(b.components[k]))
    for k in a.aux:
        np.testing.assert_array_equal(np.asarray(a.aux[k]), np.asarray(b.aux[k]))
    pd.testing.assert_frame_equal(a.meta, b.meta)
    np.testing.assert_array_equal(a.points, b.points)


# ============================================================== construction
def test_construction_fills_ids_casts_to_float32_and_copies_meta():
    meta = pd.DataFrame({"sense": ["a", "b", "a"]}, index=[10, 11, 12])
    t = tg.Trajectories(np.ones((3, 2, 4)), meta)  # float64 in, float32 kept
    assert t.states.dtype == np.float32
    assert t.meta["example"].tolist() == [0, 1, 2] and t.meta.index.tolist() == [0, 1, 2]
    assert (t.n_examples, t.n_points, t.d_model, len(t)) == (3, 2, 4, 3)
    meta.loc[10, "sense"] = "changed"  # the container holds its own copy
    assert t.meta["sense"].tolist() == ["a", "b", "a"]
    assert t.points.tolist() == [0, 1] and t.n_layers == 1  # no model info: the last point is L
    listed = tg.Trajectories([[[1.0, 2.0]]])
    assert listed.states.dtype == np.float32 and listed.states.shape == (1, 1, 2)
    none_skipped = tg.Trajectories(np.zeros((2, 2, 3)), components={"attn": None}, aux={"x": None})
    assert none_skipped.components == {} and none_skipped.aux == {}


def test_construction_errors_name_what_is_wrong():
    x = np.zeros((3, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"states must have shape \(n_examples, n_points, d_model\); got shape \(3, 4\)"):
        tg.Trajectories(x[..., 0])
    with pytest.raises(ValueError, match="meta has 2 rows but states has 3 examples"):
        tg.Trajectories(x, pd.DataFrame({"sense": ["a", "b"]}))
    with pytest.raises(ValueError, match="unknown component 'resid'"):
        tg.Trajectories(x, components={"resid": np.zeros((3, 3, 2))})
    with pytest.raises(ValueError, match="component 'attn' has 2 examples, states has 3"):
        tg.Trajectories(x, components={"attn": np.zeros((2, 3, 2))})
    with pytest.raises(ValueError, match="aux array 'block_input' has 4 examples"):
        tg.Trajectories(x, aux={"block_input": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="points has 3 entries but states has 4 points"):
        tg.Trajectories(x, points=[0, 1, 2])


def test_as_trajectories_wraps_arrays_and_passes_trajectories_through(traj):
    assert as_trajectories(traj) is traj
    wrapped = as_trajectories(np.asarray(traj.states))
    np.testing.assert_array_equal(wrapped.states, traj.states)
    assert wrapped.meta["example"].tolist() == list(range(traj.n_examples))


def test_point_labels_name_the_embedding_and_the_blocks(traj):
    assert traj.point_labels() == ["emb", "L1", "L2", "L3"]
    assert traj.select_points([0, 2]).point_labels() == ["emb", "L2"]


# ============================================================== labels and groups
def test_labels_from_a_column_or_an_array(traj):
    np.testing.assert_array_equal(traj.labels(), traj.meta["sense"].to_numpy())
    np.testing.assert_array_equal(traj.labels("word"), traj.meta["word"].to_numpy())
    given = np.arange(traj.n_examples) % 2
    np.testing.assert_array_equal(traj.labels(given), given)
    with pytest.raises(KeyError, match=r"no column 'lemma'; columns are \['example', 'text', 'word'"):
        traj.labels("lemma")
    with pytest.raises(ValueError, match="got 2 labels for 6 examples"):
        traj.labels([0, 1])


def test_group_codes_number_groups_so_that_examples_share_a_code_iff_they_share_a_group(traj):
    codes = traj.group_codes()
    groups = traj.meta["group"].to_numpy()
    for i in range(traj.n_examples):  # brute force over pairs
        for j in range(traj.n_examples):
            assert (codes[i] == codes[j]) == (groups[i] == groups[j])
    assert codes.tolist() == [0, 0, 1, 1, 2, 2]  # 0..k-1 in order of first appearance
    by_array = traj.group_codes(np.array(["b", "a", "b", "c", "a", "a"]))
    assert by_array.tolist() == [0, 1, 0, 2, 1, 1]
    by_column = traj.group_codes("word")
    assert by_column.tolist() == [0, 0, 0, 0, 0, 1]


def test_group_codes_none_and_a_missing_default_mean_ungrouped(traj):
    assert traj.group_codes(None) is None
    no_group = tg.Trajectories(traj.states, traj.meta.drop(columns="group"))
    assert no_group.group_codes() is None  # the default column is optional ...
    with pytest.raises(KeyError, match="groups column 'sentence' not in meta; columns are"):
        no_group.group_codes("sentence")  # ... any other one is not


def test_group_codes_refuse_missing_values_and_wrong_lengths(traj):
    meta = traj.meta.copy()
    meta.loc[[1, 4], "group"] = None
    holes = tg.Trajectories(traj.states, meta)
    with pytest.raises(ValueError, match=r"groups are missing for 2 examples \(example ids \[1, 4\]"):
        holes.group_codes()
    with pytest.raises(ValueError, match="got 3 groups for 6 examples"):
        traj.group_codes([0, 1, 2])



def _prefixed(causal: bool = True) -> tg.Trajectories:
    """Six examples; 0, 1 and 3 read "the bank" up to the end of the target (the model sees the same
    input there), 4 and 5 share a sentence (two targets), 2 is alone."""
    texts = ["the bank was steep", "the bank paid well", "a bank of fog", "the bank of the river",
             "we sat on the bank by the bank", "we sat on the bank by the bank"]
    ends = [8, 8, 6, 8, 18, 30]
    meta = pd.DataFrame({"text": texts, "char_end": ends, "word": "bank",
                         "sense": ["river", "money", "fog", "river", "river", "river"],
                         "group": texts})
    return tg.Trajectories(np.zeros((6, 2, 3), np.float32), meta, model_info={"causal": causal})


def test_causal_groups_merge_identical_prefixes_with_the_given_groups():
    traj = _prefixed()
    codes = traj.group_codes()
    prefixes = [t[:e] for t, e in zip(traj.meta["text"], traj.meta["char_end"])]
    groups = traj.meta["group"].tolist()
    # brute force: the transitive closure of "same prefix or same group"
    linked = np.array([[a == b or p == q for a, p in zip(groups, prefixes)] for b, q in zip(groups, prefixes)])
    for _ in range(len(groups)):
        linked = (linked.astype(int) @ linked.astype(int)) > 0
    np.testing.assert_array_equal(codes[:, None] == codes[None], linked)
    assert codes.tolist() == [0, 0, 1, 0, 2, 2]
    # a chain: 4 and 5 share a text, 5's prefix is also 6's: all three are one group
    chain = tg.concat([traj, tg.Trajectories(np.zeros((1, 2, 3), np.float32), pd.DataFrame(
        {"example": [6], "text": ["we sat on the bank by the bank"[:30] + " again"], "char_end": [30],
         "word": "bank", "sense": "river", "group": ["other"]}))])
    chain.model_info = {"causal": True}
    assert chain.group_codes().tolist() == [0, 0, 1, 0, 2, 2, 2]


def test_prefix_groups_apply_only_to_causal_models_and_can_be_turned_off():
    causal, encoder = _prefixed(), _prefixed(causal=False)
    by_text = [0, 1, 2, 3, 4, 4]
    assert encoder.group_codes().tolist() == by_text  # an encoder sees what follows: texts differ
    assert causal.group_codes(prefix=False).tolist() == by_text
    assert encoder.group_codes(prefix=True).tolist() == [0, 0, 1, 0, 2, 2]
    assert causal.group_codes(None) is None  # explicitly ungrouped
    assert causal.group_codes(None, prefix=True).tolist() == [0, 0, 1, 0, 2, 3]  # prefixes alone
    no_group = tg.Trajectories(causal.states, causal.meta.drop(columns="group"), model_info={"causal": True})
    assert no_group.group_codes().tolist() == [0, 0, 1, 0, 2, 3]
    no_text = tg.Trajectories(causal.states, causal.meta.drop(columns="text"), model_info={"causal": True})
    assert no_text.group_codes().tolist() == by_text  # nothing to compare prefixes by: the given groups
    with pytest.raises(KeyError, match="'text' and 'char_end'"):
        no_text.group_codes(prefix=True)

# ============================================================== subsetting
@pytest.mark.parametrize("key", [np.array([True, False, True, False, False, True]), [0, 2, 5], np.array([0, 2, 5])])
def test_subsetting_keeps_ids_meta_and_every_array(traj, key):
    sub = traj[key]
    rows = [0, 2, 5]
    assert sub.meta["example"].tolist() == rows and sub.meta.index.tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(sub.meta, traj.meta.iloc[rows].reset_index(drop=True))
    np.testing.assert_array_equal(sub.states, traj.states[rows])
    for k in traj.components:
        np.testing.assert_array_equal(sub.components[k], traj.components[k][rows])
    np.testing.assert_array_equal(sub.aux["block_input"], traj.aux["block_input"][rows])
    np.testing.assert_array_equal(sub.points, traj.points)
    assert sub.model_info == traj.model_info


def test_subsetting_by_slice_integer_and_series(traj):
    assert traj[1:4].meta["example"].tolist() == [1, 2, 3]
    one = traj[3]
    assert one.n_examples == 1 and one.meta["example"].tolist() == [3]
    np.testing.assert_array_equal(one.states[0], traj.states[3])
    by_series = traj[traj.meta["sense"] == "river"]
    assert by_series.meta["example"].tolist() == [0, 3, 4]
    with pytest.raises(IndexError, match=r"boolean mask has shape \(2,\), expected \(6,\)"):
        traj[np.array([True, False])]


def test_ids_survive_repeated_subsetting(traj):
    ids = _make(n=6, first_id=100)
    sub = ids[[5, 1, 3]][[2, 0]]
    assert sub.meta["example"].tolist() == [103, 105]
    np.testing.assert_array_equal(sub.states, ids.states[[3, 5]])


def test_select_points_keeps_original_indices_and_whole_components(traj):
    sub = traj.select_points([3, 0, 2])
    assert sub.points.tolist() == [3, 0, 2]
    np.testing.assert_array_equal(sub.states, traj.states[:, [3, 0, 2]])
    again = sub.select_points([2, 3])  # indices stay the original ones, not positions in ``sub``
    np.testing.assert_array_equal(again.states, traj.states[:, [2, 3]])
    assert again.points.tolist() == [2, 3]
    for k in traj.components:  # layer-indexed arrays are not point-indexed: kept whole
        np.testing.assert_array_equal(sub.components[k], traj.components[k])
    pd.testing.assert_frame_equal(sub.meta, traj.meta)
    assert sub.n_layers == N_LAYERS
    with pytest.raises(IndexError, match=r"points \[1\] are not in these trajectories \(have \[3, 0, 2\]\)"):
        sub.select_points([0, 1])


def test_subsetting_concat_and_long_frame_agree_with_the_arrays():
    # moved from test_extract (test_trajectories_subsetting_concat_and_long_frame): it checks the container
    traj = _make(n=4)
    sub = traj[traj.meta["text"].str.contains("river")]
    assert sub.meta["example"].tolist() == [0, 3]
    np.testing.assert_array_equal(sub.states, traj.states[[0, 3]])
    both = tg.concat([traj[[0, 1]], traj[[2, 3]]])
    np.testing.assert_array_equal(both.states, traj.states)
    with pytest.raises(ValueError, match="renumber"):
        tg.concat([traj, traj])
    pts = traj.select_points([0, 3])
    long = pts.to_frame()
    assert len(long) == 8 and set(long["point"]) == {0, 3}
    np.testing.assert_allclose(long["value"].to_numpy(), np.linalg.norm(pts.states, axis=-1).reshape(-1), rtol=1e-6)


# ============================================================== concat
def test_concat_of_parts_rebuilds_the_whole(traj):
    parts = [traj[[0, 1]], traj[[2]], traj[[3, 4, 5]]]
    _assert_same(tg.concat(parts), traj)
    assert tg.concat(parts).model_info == traj.model_info


def test_concat_renumbers_colliding_ids_only_when_asked():
    a, b = _make(n=3, seed=0), _make(n=2, seed=1)
    with pytest.raises(ValueError, match="example ids collide across the inputs; pass renumber=True"):
        tg.concat([a, b])
    both = tg.concat([a, b], renumber=True)
    assert both.meta["example"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(both.states, np.concatenate([a.states, b.states]))
    np.testing.assert_array_equal(both.components["heads"], np.concatenate([a.components["heads"],
                                                                            b.components["heads"]]))
    pd.testing.assert_frame_equal(both.meta.drop(columns="example"),
                                  pd.concat([a.meta, b.meta], ignore_index=True).drop(columns="example"))
    disjoint = tg.concat([a, _make(n=2, seed=1, first_id=10)])
    assert disjoint.meta["example"].tolist() == [0, 1, 2, 10, 11]  # no collision: ids kept


def test_concat_refuses_what_does_not_stack(traj):
    with pytest.raises(ValueError, match="at least one"):
        tg.concat([])
    other = _make(n=2, first_id=50)
    with pytest.raises(ValueError, match=r"trajectories 1 has points \[0, 2\]"):
        tg.concat([traj.select_points([0, 1]), other.select_points([0, 2])])
    bare = tg.Trajectories(other.states, other.meta)
    with pytest.raises(ValueError, match="trajectories 1 has components"):
        tg.concat([traj, bare])
    no_aux = tg.Trajectories(other.states, other.meta, other.components)
    assert tg.concat([traj, no_aux]).aux == {}  # an aux array only where every input has it


# ============================================================== long form
def test_to_frame_matches_a_brute_force_loop(traj):
    sub = traj.select_points([1, 3])
    metrics = {"norm2": np.linalg.norm(sub.states, axis=-1) ** 2, "first": sub.states[..., 0]}
    got = sub.to_frame(metrics, meta_columns=("word", "sense", "absent"))
    rows = []
    for name, arr in metrics.items():
        for i in range(sub.n_examples):
            for j, p in enumerate(sub.points):
                rows.append({"example": sub.meta["example"][i], "point": p, "word": sub.meta["word"][i],
                             "sense": sub.meta["sense"][i], "metric": name, "value": arr[i, j]})
    want = pd.DataFrame(rows)
    assert list(got.columns) == ["example", "point", "word", "sense", "metric", "value"]  # "absent" skipped
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_to_frame_defaults_to_the_norm_and_checks_shapes(traj):
    long = traj.to_frame()
    assert set(long["metric"]) == {"norm"} and len(long) == traj.n_examples * traj.n_points
    wide = long.pivot(index="example", columns="point", values="value").to_numpy()
    np.testing.assert_allclose(wide, np.linalg.norm(traj.states, axis=-1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"metric 'bad' has shape \(6, 3\), expected \(6, 4\)"):
        traj.to_frame({"bad": np.zeros((6, 3))})


# ============================================================== the store
def test_save_load_round_trip_is_bit_for_bit_in_memory_and_lazy(traj, tmp_path):
    import dask.array as da

    sub = traj.select_points([0, 2, 3])  # non-default points travel too
    path = sub.save(tmp_path / "t.zarr")
    assert path == tmp_path / "t.zarr" and not (tmp_path / "t.zarr.partial").exists()
    back = tg.load(path)
    _assert_same(back, sub)
    assert {k: v for k, v in back.model_info.items() if k != "fingerprint"} == sub.model_info
    lazy = tg.load(path, lazy=True)
    assert lazy.is_lazy and isinstance(lazy.states, da.Array) and isinstance(lazy.components["heads"], da.Array)
    assert "lazy" in repr(lazy)
    _assert_same(lazy.compute(), sub)
    assert not lazy.compute().is_lazy and back.compute() is back  # compute is a no-op in memory


def test_float16_storage_is_within_half_precision(traj, tmp_path):
    back = tg.load(traj.save(tmp_path / "h.zarr", dtype="float16"))
    assert back.states.dtype == np.float32
    np.testing.assert_array_equal(back.states, traj.states.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float16'"):
        traj.save(tmp_path / "b.zarr", dtype="int8")
    assert not (tmp_path / "b.zarr").exists() and not (tmp_path / "b.zarr.partial").exists()


def test_save_in_chunks_round_trips_and_checks_its_chunk_size(traj, tmp_path):
    path = traj.save(tmp_path / "c.zarr", chunk_size=4)  # chunks of 4 and 2 examples
    assert sorted(p.name for p in (path / "manifest").iterdir()) == ["0.json", "1.json"]
    _assert_same(tg.load(path), traj)
    _assert_same(tg.load(path, lazy=True).compute(), traj)
    with pytest.raises(TypeError, match="chunk_size must be an int, got float 2.5"):
        traj.save(tmp_path / "f.zarr", chunk_size=2.5)
    with pytest.raises(ValueError, match="chunk_size must be positive, got 0"):
        traj.save(tmp_path / "z.zarr", chunk_size=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.zarr"]  # nothing else left behind


def test_existing_stores_are_kept_unless_overwritten(traj, tmp_path):
    path = traj.save(tmp_path / "t.zarr")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        traj[[0, 1]].save(path)
    assert tg.load(path).n_examples == traj.n_examples  # the refused save changed nothing
    traj[[0, 1]].save(path, overwrite=True)
    _assert_same(tg.load(path), traj[[0, 1]])


def test_loading_what_is_not_a_finished_store_fails_clearly(traj, tmp_path):
    with pytest.raises(FileNotFoundError, match="no trajgeo store"):
        tg.load(tmp_path / "none.zarr")
    writer = StoreWriter.create(tmp_path / "half.zarr", {"states": traj.states.shape}, traj.meta,
                                {"points": [0, 1, 2, 3]}, chunk_size=4)
    writer.write_chunk(0, {"states": traj.states[:4]})  # chunk 1 never written
    with pytest.raises(FileNotFoundError, match="unfinished run"):
        tg.load(tmp_path / "half.zarr")
    with pytest.raises(RuntimeError, match=r"chunks \[1\] are not written"):
        writer.finalize()
    assert not (tmp_path / "half.zarr").exists()


def test_the_store_writer_is_importable_from_its_old_place():
    from trajgeo.store import StoreWriter as Moved

    assert StoreWriter is Moved


# ============================================================== identity
def test_fingerprint_is_stable_and_survives_a_round_trip(traj, tmp_path):
    assert traj.fingerprint() == _make().fingerprint()
    assert tg.load(traj.save(tmp_path / "t.zarr")).fingerprint() == traj.fingerprint()


def test_fingerprint_changes_when_states_points_or_ids_change(traj):
    base = traj.fingerprint()
    states = np.array(traj.states)
    states[4, 2, 1] = np.nextafter(states[4, 2, 1], np.float32(np.inf))  # one value, one ulp
    assert tg.Trajectories(states, traj.meta, model_info=traj.model_info).fingerprint() != base
    assert tg.Trajectories(traj.states, traj.meta, points=[0, 1, 2, 4], model_info=traj.model_info).fingerprint() != base
    renumbered = traj.meta.assign(example=traj.meta["example"] + 1)
    assert tg.Trajectories(traj.states, renumbered, model_info=traj.model_info).fingerprint() != base
    assert tg.Trajectories(traj.states, traj.meta, model_info=traj.model_info).fingerprint() == base


def test_lazy_fingerprint_is_the_stores_and_changes_with_its_states(traj, tmp_path):
    a = tg.load(traj.save(tmp_path / "a.zarr"), lazy=True)
    same = tg.load(traj.save(tmp_path / "same.zarr"), lazy=True)
    assert a.fingerprint() == same.fingerprint()  # written twice, the same content
    states = np.array(traj.states)
    states[0, 0, 0] += 1.0
    changed = tg.Trajectories(states, traj.meta, traj.components, traj.aux, model_info=traj.model_info)
    b = tg.load(changed.save(tmp_path / "b.zarr"), lazy=True)
    assert b.fingerprint() != a.fingerprint()
