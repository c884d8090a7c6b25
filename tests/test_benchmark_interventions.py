"""benchmarks/interventions.py: its baselines do the work they claim (one plain forward per patched cell; one
forward and backward per batch), its nnsight sweep computes the same effects as tg.interventions.patch (to float
rounding, on a tiny random Llama; skipped where nnsight is not installed), and without nnsight it says so."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import trajgeo as tg
from trajgeo import interventions as iv
from trajgeo.interventions._pairs import prepare_pairs
from trajgeo.interventions.readouts import as_readout

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "interventions.py"

# every word one token of `wtok` (the conftest corpus)
_PAIRS = pd.DataFrame([
    dict(pair=0, word="bank", text="i sat by the river bank and watched the water",
         counterfactual="i sat by the savings bank and watched the water", target="bank", sense="river",
         counterfactual_sense="finance", kind="flip"),
    dict(pair=7, word="bank", text="she went to the muddy bank to deposit her salary",
         counterfactual="she went to the savings bank to deposit her salary", target="bank", sense="river",
         counterfactual_sense="finance", kind="flip"),
    dict(pair=3, word="bank", text="fishermen lined the grassy bank of the slow brown river",
         counterfactual="fishermen lined the savings bank of the slow brown river", target="bank", sense="river",
         counterfactual_sense="finance", kind="flip"),
])


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_interventions", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llama(tiny_model, wtok):
    return tg.load_model((tiny_model("llama", len(wtok)), wtok))


def _readout(lm):
    w = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0))
    return lambda h: h @ (w / w.norm()).to(h.dtype)


class _Rows:
    """Counts the rows (and calls) that go through a module's forward."""

    def __init__(self, module):
        self.rows = self.calls = 0
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        x = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        self.rows += int(x.shape[0])
        self.calls += 1


def test_plain_forwards_run_one_full_forward_per_patched_cell_in_the_sweeps_batches(bench, llama):
    _, items = prepare_pairs(llama, _PAIRS)
    n_units, batch_size = llama.n_layers + 1, 5
    run = bench.plain_forwards(llama, items, n_units, batch_size)
    counter = _Rows(llama.adapter.base)
    try:
        run()
    finally:
        counter.handle.remove()
    cells = sum(it.n for it in items)
    assert counter.rows == n_units * cells
    assert counter.calls == n_units * -(-cells // batch_size)


def test_forward_backward_is_one_pass_per_batch_of_pairs(bench, llama):
    _, items = prepare_pairs(llama, _PAIRS)
    run = bench.forward_backward(llama, items, 2)
    counter = _Rows(llama.adapter.base)
    try:
        run()
    finally:
        counter.handle.remove()
    assert counter.rows == len(items) and counter.calls == 2


def test_without_nnsight_the_side_by_side_is_skipped(bench, llama, monkeypatch):
    monkeypatch.setitem(sys.modules, "nnsight", None)  # import nnsight now raises ImportError
    _, items = prepare_pairs(llama, _PAIRS)
    assert bench.nnsight_sweep(llama, items, None, 4) is None


def test_the_nnsight_sweep_computes_the_effects_of_patch(bench, llama):
    pytest.importorskip("nnsight")
    readout = _readout(llama)
    exact = iv.patch(llama, _PAIRS, site="resid", readout=readout, progress=False, batch_size=4)
    _, items = prepare_pairs(llama, _PAIRS)
    run = bench.nnsight_sweep(llama, items, as_readout(readout).bind(llama, _PAIRS), 4)
    got = run()
    ref = exact.set_index(["point", "pair", "position"])["effect"]
    want = np.array([[ref[(p, _PAIRS["pair"].iloc[items[i].index], c)] for i, c in run.cells]
                     for p in range(llama.n_layers + 1)])
    assert got.shape == want.shape == (llama.n_layers + 1, sum(it.n for it in items))
    assert np.abs(want).max() > 1e-3  # the patches move the readout
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, np.abs(want).max()))
