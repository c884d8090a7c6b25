"""The trajgeo store on disk: a Zarr group written chunk by chunk, checksummed, owned by one run, and made
visible only when complete.

Layout of a store ``<path>`` (format 2)::

    trajgeo.json       the marker: format and version, what the states depend on (``states_key``), the
                       checksums of meta.parquet and of every zarr.json, the fingerprint; written last
    zarr.json          the Zarr group: points, model info, array names, chunk size
    states/  components/<name>/  aux/<name>/
                       arrays chunked by examples; every chunk is written, even one of fill values
    manifest/<i>.json  the checksum of every file of chunk i: one small file per chunk, written by the
                       process that wrote the chunk (ranks never race), and chunk i's done mark
    meta.parquet       the metadata table: always the caller's (rewritten alone when only it changed)

:class:`StoreWriter` writes ``<path>.partial`` and renames it into place once every chunk is done, so a
final-named store is always complete. ``<path>.lock`` (:class:`StoreLock`) records the host, process
and job of the run that owns the store; the ranks of one ``torchrun``/``accelerate`` job share it.
:func:`read` (behind :func:`trajgeo.load`) checks every file against its checksum as it is read, in
memory and lazily alike; :func:`verify` checks a whole store and lists every problem. Stores of format 1
(trajgeo 0.1, no checksums) still load, with a warning; :func:`upgrade` records checksums for them.

Modules: :mod:`~trajgeo.store.layout` (format, marker, manifests, checksums, the errors),
:mod:`~trajgeo.store.lock` (:class:`StoreLock`), :mod:`~trajgeo.store.writer` (:class:`StoreWriter`,
:func:`rewrite_meta`), :mod:`~trajgeo.store.reader` (:func:`read`) and :mod:`~trajgeo.store.check`
(:func:`verify`, :func:`upgrade`). Every name is importable from ``trajgeo.store``.
"""

from __future__ import annotations

import os  # noqa: F401  (``trajgeo.store.os``: tests patch ``os.replace`` through it)

from trajgeo.store.layout import (  # noqa: F401
    CHECKSUM, FORMAT_VERSION, MANIFEST, MARKER, META, CorruptStoreError, StoreError, StoreLockedError, _done_count,
    _fingerprint, _hash, _json_bytes, _key_difference, _listing, _metadata_hashes, _parquet_bytes, _partial,
    _read_manifest, _read_manifests, _read_marker, _sweep, _version, _write_atomic, check_target, store_format,
)
from trajgeo.store.lock import StoreLock, _pid_alive, job_id, lock_holder  # noqa: F401
from trajgeo.store.writer import StoreWriter, _replace, rewrite_meta, stored_key  # noqa: F401
from trajgeo.store.reader import Contents, _checked_store, _existing, _expected, _read_meta, _read_v1, read  # noqa: F401
from trajgeo.store.check import StoreCheck, _verify_v1, upgrade, verify  # noqa: F401

__all__ = [
    "StoreWriter", "StoreLock", "StoreError", "CorruptStoreError", "StoreLockedError", "StoreCheck",
    "FORMAT_VERSION", "check_target", "store_format", "read", "verify", "upgrade", "rewrite_meta",
]

# the public classes say where users import them from (tracebacks print ``trajgeo.store.StoreLockedError``)
for _cls in (StoreWriter, StoreLock, StoreError, CorruptStoreError, StoreLockedError, StoreCheck, Contents):
    _cls.__module__ = __name__
del _cls
