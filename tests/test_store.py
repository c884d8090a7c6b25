"""The store: checksummed chunks (each corruption an error naming it), verify, upgrade of format-1 stores,
safe overwrite, the lock (one run owns a store; stale takeover), one done mark per chunk, crash-safe replace."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pandas as pd
import pytest

import trajgeo as tg
from trajgeo import store
from trajgeo.store import CorruptStoreError, StoreError, StoreLock, StoreLockedError, StoreWriter

N, CHUNK = 10, 4  # three chunks: 0..3, 4..7, 8..9


def _traj(n: int = N, seed: int = 0) -> tg.Trajectories:
    rng = np.random.default_rng(seed)
    meta = pd.DataFrame({"sense": ["a", "b"] * (n // 2) + ["a"] * (n % 2), "word": "w"})
    return tg.Trajectories(rng.normal(size=(n, 4, 6)).astype(np.float32), meta,
                           components={"attn": rng.normal(size=(n, 3, 6)).astype(np.float32),
                                       "mlp": rng.normal(size=(n, 3, 6)).astype(np.float32)},
                           aux={"block_input": rng.normal(size=(n, 6)).astype(np.float32)},
                           model_info={"name": "toy", "n_layers": 3})


@pytest.fixture
def saved(tmp_path):
    traj = _traj()
    return traj, traj.save(tmp_path / "s.zarr", chunk_size=CHUNK)


def _files(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ============================================================== layout
def test_every_chunk_is_written_and_has_its_own_manifest(tmp_path):
    traj = _traj()
    states = np.array(traj.states)
    states[4:8] = np.nan  # a whole chunk of fill values: written anyway, so a missing file is always an error
    path = tg.Trajectories(states, traj.meta).save(tmp_path / "n.zarr", chunk_size=CHUNK)
    names = set(_files(path))
    assert {"trajgeo.json", "zarr.json", "meta.parquet", "states/zarr.json"} <= names
    assert {f"states/c/{i}/0/0" for i in range(3)} <= names
    assert {f"manifest/{i}.json" for i in range(3)} <= names
    marker = json.loads((path / "trajgeo.json").read_bytes())
    assert marker["format_version"] == store.FORMAT_VERSION == 2 and marker["complete"] and marker["n_chunks"] == 3
    manifest = json.loads((path / "manifest" / "1.json").read_bytes())
    assert (manifest["start"], manifest["stop"]) == (4, 8) and set(manifest["files"]) == {"states/c/1/0/0"}
    check = tg.verify(path)
    assert check.ok and check.verifiable and check.problems.empty
    back = tg.load(path)
    np.testing.assert_array_equal(back.states, states)  # NaN == NaN position by position
    assert not (tmp_path / "n.zarr.lock").exists() and not (tmp_path / "n.zarr.partial").exists()


# ============================================================== corruption
def _flip(f):
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def _truncate(f):
    f.write_bytes(f.read_bytes()[:-7])


CORRUPTIONS = {
    "flipped byte": lambda path, key: _flip(path / key),
    "deleted chunk": lambda path, key: (path / key).unlink(),
    "truncated chunk": lambda path, key: _truncate(path / key),
    # chunk 0 copied over chunk 1: a valid chunk, of the right shape, in the wrong place
    "chunk copied over another": lambda path, key: shutil.copy(path / key.replace("/c/1/", "/c/0/"), path / key),
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
@pytest.mark.parametrize("array", ["states", "components/attn"])
def test_a_corrupted_chunk_is_an_error_naming_store_array_and_chunk(saved, how, array):
    traj, path = saved
    key = f"{array}/c/1/0/0"
    assert np.isfinite(tg.load(path).states).all()
    CORRUPTIONS[how](path, key)
    named = rf"store .*s\.zarr: chunk 1 of array '{array}' \(examples 4\.\.7, file {key}\)"
    problem = "is missing" if how == "deleted chunk" else "does not match its checksum"
    with pytest.raises(CorruptStoreError, match=named + " " + problem):
        tg.load(path)
    lazy = tg.load(path, lazy=True)  # opening reads no chunk; computing reads it and fails the same way
    arr = lazy.states if array == "states" else lazy.components["attn"]
    np.testing.assert_array_equal(arr[:4].compute(), np.asarray(traj.states if array == "states" else
                                                                traj.components["attn"])[:4])  # chunk 0 is fine
    with pytest.raises(CorruptStoreError, match=named):
        arr.compute()
    check = tg.verify(path)
    assert not check.ok and len(check.problems) == 1
    row = check.problems.iloc[0]
    assert (row["file"], row["array"], row["chunk"]) == (key, array, 1) and problem in row["problem"]
    assert key in str(check)


def test_verify_lists_every_problem(saved):
    _, path = saved
    _flip(path / "states/c/0/0/0")
    (path / "components/mlp/c/2/0/0").unlink()
    (path / "manifest" / "1.json").unlink()
    _truncate(path / "meta.parquet")
    check = tg.verify(path)
    got = {(r.file, r.chunk if r.chunk == r.chunk else None) for r in check.problems.itertuples()}
    assert got == {("states/c/0/0/0", 0), ("components/mlp/c/2/0/0", 2), ("manifest/1.json", 1),
                   ("meta.parquet", None)}, check.problems
    # chunk 1's files are then listed by no manifest: reported too
    assert "manifest/1.json" in str(check)


@pytest.mark.parametrize("name", ["zarr.json", "states/zarr.json", "meta.parquet", "trajgeo.json"])
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_metadata_files_are_clear_errors_naming_the_file(saved, name, damage):
    _, path = saved
    f = path / name
    _truncate(f) if damage == "truncated" else f.unlink()
    problem = {"truncated": r"(does not match its checksum|is unreadable)", "missing": "is missing"}[damage]
    if name == "trajgeo.json" and damage == "missing":  # zarr.json still says trajgeo format 2
        problem = "trajgeo.json is missing"
    with pytest.raises(CorruptStoreError, match=rf"store .*s\.zarr: {name}.* {problem}|{problem}"):
        tg.load(path)
    with pytest.raises(CorruptStoreError, match=name):
        tg.load(path)
    assert not tg.verify(path).ok


def test_a_lost_manifest_is_an_error_not_a_silent_nan(saved):
    _, path = saved
    (path / "manifest" / "2.json").unlink()
    with pytest.raises(CorruptStoreError, match=r"chunk 2 has no checksums \(manifest/2\.json is missing\)"):
        tg.load(path)


def test_loading_what_is_not_a_store_says_so(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(StoreError, match=r"notes is a directory but not a trajgeo store .*holds todo\.txt"):
        tg.load(tmp_path / "notes")
    (tmp_path / "f.zarr").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a trajgeo store"):
        tg.load(tmp_path / "f.zarr")
    with pytest.raises(StoreError, match="not a trajgeo store"):
        tg.verify(tmp_path / "notes")


# ============================================================== format 1 (trajgeo 0.1)
def _format1_store(path, traj: tg.Trajectories, chunk_size: int = CHUNK):
    """Exactly what trajgeo 0.1 wrote: zarr arrays (empty chunks skipped), a `done` array, meta.parquet."""
    import zarr

    group = zarr.open_group(str(path), mode="w")
    arrays = {"states": traj.states, **{f"components/{k}": v for k, v in traj.components.items()}}
    for name, arr in arrays.items():
        a = group.create_array(name, shape=arr.shape, chunks=(chunk_size,) + arr.shape[1:], dtype="float32",
                               fill_value=np.nan)
        a[:] = arr
    n_chunks = -(-traj.n_examples // chunk_size)
    done = group.create_array("done", shape=(n_chunks,), chunks=(n_chunks,), dtype=bool, fill_value=False)
    done[:] = True
    traj.meta.to_parquet(path / "meta.parquet", index=False)
    group.attrs.update({"format": "trajgeo", "format_version": 1, "trajgeo_version": "0.1.0",
                        "chunk_size": chunk_size, "resume_key": None, "arrays": sorted(arrays),
                        "points": [int(p) for p in traj.points], "model_info": {"name": "toy"},
                        "complete": True, "fingerprint": "f" * 24})
    return path


def test_format1_stores_load_with_a_warning_and_upgrade_to_checked_ones(tmp_path):
    traj = _traj()
    path = _format1_store(tmp_path / "old.zarr", traj)
    with pytest.warns(UserWarning, match=r"store format 1, no checksums.*verify --upgrade"):
        back = tg.load(path)
    np.testing.assert_array_equal(back.states, traj.states)
    np.testing.assert_array_equal(back.components["mlp"], traj.components["mlp"])
    pd.testing.assert_frame_equal(back.meta, traj.meta)
    with pytest.warns(UserWarning):
        assert tg.load(path, lazy=True).states.compute().shape == traj.states.shape
    check = tg.verify(path)
    assert check.ok and not check.verifiable
    check = store.upgrade(path)
    assert check.ok and check.verifiable and check.format_version == 2
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # checked now: no warning
        np.testing.assert_array_equal(tg.load(path).states, traj.states)
    _flip(path / "states/c/2/0/0")
    with pytest.raises(CorruptStoreError, match="chunk 2 of array 'states'"):
        tg.load(path)


def test_a_format1_store_with_a_missing_chunk_is_not_upgraded(tmp_path):
    path = _format1_store(tmp_path / "old.zarr", _traj())
    (path / "states/c/1/0/0").unlink()  # format 1 read this back as NaN, silently
    check = tg.verify(path)
    assert not check.ok and check.problems["file"].tolist() == ["states/c/1/0/0"]
    before = _files(path)
    with pytest.raises(CorruptStoreError, match=r"(?s)cannot upgrade .*states/c/1/0/0"):
        store.upgrade(path)
    assert _files(path) == before  # nothing changed


# ============================================================== safe overwrite
def test_overwrite_never_replaces_a_folder_that_is_not_a_store(tmp_path):
    folder = tmp_path / "myproj"
    (folder / "other.zarr").mkdir(parents=True)
    (folder / "notes.txt").write_text("keep me")
    before = _files(folder)
    with pytest.raises(FileExistsError, match=r"myproj is a directory that is not a trajgeo store \(it holds notes"
                                              r"\.txt, other\.zarr\); nothing was written or deleted"):
        _traj().save(folder, overwrite=True)
    assert _files(folder) == before and set(os.listdir(tmp_path)) == {"myproj"}


def test_overwrite_never_replaces_a_file(tmp_path):
    f = tmp_path / "out.zarr"
    f.write_text("a table")
    with pytest.raises(FileExistsError, match=r"out\.zarr is a file, not a trajgeo store; nothing was written"):
        _traj().save(f, overwrite=True)
    assert f.read_text() == "a table" and os.listdir(tmp_path) == ["out.zarr"]


def test_overwrite_replaces_a_store_and_an_empty_folder_is_used(saved, tmp_path):
    traj, path = saved
    other = _traj(n=3, seed=5)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        other.save(path)
    other.save(path, overwrite=True)
    np.testing.assert_array_equal(tg.load(path).states, other.states)
    assert not list(tmp_path.glob("s.zarr.*"))  # no partial, lock or moved-aside store left
    (tmp_path / "empty").mkdir()
    np.testing.assert_array_equal(tg.load(traj.save(tmp_path / "empty")).states, traj.states)


def test_an_interrupted_replacement_never_leaves_a_partial_store_under_the_final_name(saved, monkeypatch):
    traj, path = saved
    new = _traj(seed=9)
    real = os.replace

    def crash(src, dst):
        if str(src) == f"{path}.partial":
            raise KeyboardInterrupt  # the process dies between moving the old store aside and the rename
        return real(src, dst)

    monkeypatch.setattr(store.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        new.save(path, overwrite=True)
    monkeypatch.setattr(store.os, "replace", real)
    assert not path.exists()  # nothing final-named; both stores are whole and named for what they are
    moved = list(path.parent.glob("s.zarr.replaced-*"))
    assert len(moved) == 1 and tg.verify(moved[0]).ok
    with pytest.raises(FileNotFoundError, match=r"unfinished run left .*s\.zarr\.partial.*previous store at"):
        tg.load(path)
    new.save(path, overwrite=True)
    np.testing.assert_array_equal(tg.load(path).states, new.states)
    assert not list(path.parent.glob("s.zarr.*"))  # the moved-aside store is cleaned up


# ============================================================== the lock
_HOLD = textwrap.dedent("""
    import sys, time
    from trajgeo.store import StoreLock
    with StoreLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_store_another_live_run_holds_is_refused_at_once(tmp_path):
    path = tmp_path / "s.zarr"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "held"
        rec = json.loads((tmp_path / "s.zarr.lock").read_text())
        assert rec["pid"] == holder.pid and rec["host"] == socket.gethostname()
        with pytest.raises(StoreLockedError, match=rf"s\.zarr is being written by another run: process {holder.pid} "
                                                   rf"on host {socket.gethostname()} since"):
            _traj().save(path)
        assert not path.exists() and not (tmp_path / "s.zarr.partial").exists()
    finally:
        holder.kill()
        holder.wait()
    with pytest.warns(UserWarning, match=rf"took over the lock .* process {holder.pid} of this host"):
        _traj().save(path)  # the holder was killed (no cleanup): its lock is stale


def test_a_stale_lock_of_this_host_is_taken_over(tmp_path):
    path = tmp_path / "s.zarr"
    pid = _dead_pid()
    (tmp_path / "s.zarr.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                                      "since": "2020-01-01 00:00:00", "job": None}))
    with pytest.warns(UserWarning, match=rf"took over the lock of .*s\.zarr: process {pid} of this host.*is gone"):
        _traj().save(path)
    assert tg.verify(path).ok and not (tmp_path / "s.zarr.lock").exists()


def test_a_lock_of_another_host_is_reported_with_how_to_clear_it(tmp_path):
    path = tmp_path / "s.zarr"
    lock = tmp_path / "s.zarr.lock"
    lock.write_text(json.dumps({"host": "node-17.cluster", "pid": 4242, "since": "2020-01-01 00:00:00",
                                "job": "slurm:99."}))
    with pytest.raises(StoreLockedError, match=r"locked by process 4242 on host node-17\.cluster since 2020-01-01 "
                                               r"00:00:00 \(job slurm:99\.\).*delete .*s\.zarr\.lock"):
        _traj().save(path)
    assert lock.exists() and not path.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="kernel locks (flock) are POSIX")
def test_a_loser_of_a_close_race_names_the_winner_once_its_record_is_written(tmp_path):
    import fcntl

    path = tmp_path / "s.zarr"
    lock = tmp_path / "s.zarr.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)  # the winner: kernel lock taken, record not yet written
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        record = {"host": socket.gethostname(), "pid": 4242, "since": "2020-01-01 00:00:00", "job": None}
        late = threading.Timer(0.3, lambda: os.pwrite(fd, json.dumps(record).encode(), 0))
        late.start()
        with pytest.raises(StoreLockedError, match="being written by another run: process 4242 on host"):
            StoreLock(path).acquire()
        late.join()
        os.ftruncate(fd, 0)  # a record that never comes: said so, after the short wait (2 s)
        with pytest.raises(StoreLockedError, match="held but not yet filled in"):
            StoreLock(path).acquire()
        assert not path.exists() and not (tmp_path / "s.zarr.partial").exists()
    finally:
        os.close(fd)


def test_the_same_process_cannot_write_one_store_twice(tmp_path):
    path = tmp_path / "s.zarr"
    with StoreLock(path):
        with pytest.raises(StoreLockedError, match="already being written by this process"):
            _traj().save(path)
    _traj().save(path)


def test_an_unwritable_folder_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match=r"cannot write the store .*file/s\.zarr"):
        store.check_target(blocker / "s.zarr")


# ============================================================== one done mark per chunk
def test_ranks_writing_chunks_at_once_never_lose_a_done_mark(tmp_path):
    n, cs = 80, 2
    states = np.random.default_rng(0).normal(size=(n, 2, 3)).astype(np.float32)
    meta = pd.DataFrame({"example": range(n)})
    path = tmp_path / "s.zarr"
    with StoreLock(path):
        first = StoreWriter.create(path, {"states": states.shape}, meta, {"points": [0, 1]}, chunk_size=cs,
                                   resume_key="k")
        second = StoreWriter.join(path, "k", timeout=10)

        def work(writer, rank):
            for i, (s, e) in enumerate(writer.chunk_bounds()):
                if i % 2 == rank:
                    writer.write_chunk(i, {"states": states[s:e]})

        threads = [threading.Thread(target=work, args=(w, r)) for r, w in enumerate((first, second))]
        [t.start() for t in threads]
        [t.join() for t in threads]
        # one shared `done` array rewritten by both lost marks; one manifest per chunk cannot
        assert first.done_chunks().all() and second.done_chunks().all()
        first.finalize()
    assert tg.verify(path).ok
    np.testing.assert_array_equal(tg.load(path).states, states)


def test_a_rank_of_another_job_is_refused_while_that_job_runs(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.getcwd(), "TORCHELASTIC_RUN_ID": "job-a"})
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-b")
        with pytest.raises(StoreLockedError, match=rf"process {holder.pid} .*\(job torchelastic:job-a\)"):
            StoreWriter.join(path, "k", timeout=5)
    finally:
        holder.kill()
        holder.wait()


def test_finalizing_sweeps_away_what_killed_writers_left(tmp_path):
    traj = _traj()
    path = tmp_path / "s.zarr"
    with StoreLock(path):
        writer = StoreWriter.create(path, {"states": traj.states.shape}, traj.meta, {"points": [0, 1, 2, 3]},
                                    chunk_size=CHUNK)
        for i, (s, e) in enumerate(writer.chunk_bounds()):
            writer.write_chunk(i, {"states": traj.states[s:e]})
        partial = tmp_path / "s.zarr.partial"
        (partial / "states/c/0/0/0.3f2a.partial").write_bytes(b"half a chunk")  # zarr's temporary file
        (partial / "manifest" / ".1.json.999.abcd.tmp").write_bytes(b"{")  # ours
        writer.finalize()
    assert tg.verify(path).ok and not list(path.rglob("*.partial")) and not list(path.rglob(".*.tmp"))


def test_finalize_still_takes_the_old_fingerprint_argument_with_a_warning(tmp_path):
    traj = _traj(n=3)
    writer = StoreWriter.create(tmp_path / "s.zarr", {"states": traj.states.shape}, traj.meta, {"points": [0, 1, 2, 3]},
                                chunk_size=3)
    writer.write_chunk(0, {"states": traj.states})
    with pytest.warns(DeprecationWarning, match=r"finalize\(fingerprint=\) is ignored"):
        path = writer.finalize(fingerprint="abc")
    assert tg.load(path, lazy=True).fingerprint() != "abc" and tg.verify(path).ok
