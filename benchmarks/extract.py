"""Extraction speed and memory: trajgeo against the bare Hugging Face forward and the naive loop.

Every method runs in its own subprocess on the same examples, after the model is loaded, so its
time and peak memory are its own. Reported: seconds, tokens per second (the tokens of the full
sentences, the same work for every method, so a method that reads fewer tokens is faster), peak
RSS above the loaded model, and each as a ratio to (a), the floor:

(a) floor: ``model(**batch, output_hidden_states=True)`` on the same length-sorted, padded batches,
    full sequences, keeping the target rows of every hidden state;
(b) ``tg.extract`` without and with components;
(c) the naive loop: one sentence at a time, full sequence, all hidden states to the CPU;
(d) nnsight / TransformerLens where installed (``pip install .[bench]``), saving every layer.

Usage: ``python benchmarks/extract.py [--model smollm2] [--words bank,spring,square] [--n 300]``
Short form (about a minute on 2 cores): ``--n 120 --methods floor,trajgeo,trajgeo_components``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coarsewsd20"


def _peak_reset() -> None:
    # Linux: writing 5 to clear_refs resets the peak-RSS high-water mark (VmHWM)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def examples(words: str, n: int):
    import pandas as pd

    import trajgeo as tg

    if DATA.exists():
        frames = [tg.datasets.read_coarsewsd20(DATA, w, split="train") for w in words.split(",")]
        df = pd.concat(frames, ignore_index=True)
    else:
        df = tg.datasets.builtin()
    df = df.sample(n=min(n, len(df)), random_state=0).reset_index(drop=True)
    df["example"] = range(len(df))
    return df


def _batches(lm, df, batch_size: int):
    """The floor's batches: full sequences, sorted by length, right-padded; target = last subtoken."""
    import torch

    from trajgeo.extract import align_targets

    aligned, _ = align_targets(lm.tokenizer, df, causal=lm.adapter.causal, truncate=False)
    order = sorted(range(len(aligned)), key=lambda i: len(aligned[i].ids))
    pad = lm.tokenizer.pad_token_id or 0
    for b in range(0, len(order), batch_size):
        rows = [aligned[i] for i in order[b:b + batch_size]]
        longest = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), longest), pad)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r.ids)] = torch.tensor(r.ids)
            mask[i, :len(r.ids)] = 1
        yield ids, mask, torch.tensor([r.positions[-1] for r in rows])


def run_method(method: str, model: str, words: str, n: int, batch_size: int) -> dict:
    import torch

    import trajgeo as tg

    torch.set_num_threads(os.cpu_count() or 1)
    lm = tg.load_model(model)
    df = examples(words, n)
    n_tokens = int(sum(len(x) for x in lm.tokenizer(df["text"].tolist())["input_ids"]))
    rss0 = _rss("VmRSS")
    _peak_reset()
    t0 = time.perf_counter()
    if method == "floor":
        kept = []
        with torch.inference_mode():
            for ids, mask, pos in _batches(lm, df, batch_size):
                hs = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
                kept.append(torch.stack([h[torch.arange(len(pos)), pos] for h in hs], 1).numpy())
    elif method in ("trajgeo", "trajgeo_components"):
        tg.extract(lm, df, components=method.endswith("components"), batch_size=batch_size, progress=False)
    elif method == "naive":
        from trajgeo.extract import align_targets

        aligned, _ = align_targets(lm.tokenizer, df, causal=lm.adapter.causal, truncate=False)
        kept = []
        with torch.inference_mode():
            for a in aligned:
                hs = lm.model(input_ids=torch.tensor([a.ids]), output_hidden_states=True).hidden_states
                kept.append([h[0].cpu().numpy()[a.positions[-1]] for h in hs])
    elif method == "nnsight":
        import nnsight  # optional: pip install .[bench]
        from nnsight import NNsight

        nn_model = NNsight(lm.model)
        layers = nn_model.model.layers  # the Llama-style path (SmolLM2)
        kept = []
        for ids, mask, pos in _batches(lm, df, batch_size):
            with torch.inference_mode(), nn_model.trace(input_ids=ids, attention_mask=mask):
                saved = nnsight.save([])  # names bound in a trace body do not escape it unless saved
                for layer in layers:
                    saved.append(layer.output)  # every layer, full sequences
            rows = torch.arange(len(pos))
            kept.append([(s[0] if isinstance(s, tuple) else s)[rows, pos] for s in saved])
    elif method == "transformer_lens":
        from transformer_lens import TransformerBridge  # optional: pip install .[bench]

        # TransformerLens needs the architecture's official name to map the weights; it takes ours as hf_model
        tl = TransformerBridge.boot_transformers("HuggingFaceTB/SmolLM2-135M", hf_model=lm.model,
                                                 tokenizer=lm.tokenizer, device="cpu")
        kept = []
        with torch.inference_mode():
            for ids, mask, pos in _batches(lm, df, batch_size):
                _, cache = tl.run_with_cache(ids, attention_mask=mask,
                                             names_filter=lambda n: n.endswith("hook_resid_post"))
                kept.append([v[torch.arange(len(pos)), pos] for v in cache.values()])
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - t0
    return {"method": method, "seconds": seconds, "examples": len(df), "tokens": n_tokens,
            "tokens_per_s": n_tokens / seconds, "peak_rss_mb": _rss("VmHWM") - rss0}


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--words", default="bank,spring,square")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--methods", default="floor,trajgeo,trajgeo_components,naive,nnsight,transformer_lens")
    parser.add_argument("--out", default="results/bench_extract.csv", type=Path)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # child process: one method, result as JSON on the last line
        print(json.dumps(run_method(args.one, args.model, args.words, args.n, args.batch_size)))
        return 0
    rows = []
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", method, "--model", args.model, "--words", args.words,
               "--n", str(args.n), "--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            rows.append({"method": method, "note": last[:80]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows)
    if "floor" in set(table["method"]) and "tokens_per_s" in table:
        floor = table.set_index("method").loc["floor"]
        table["speed_vs_floor"] = table["tokens_per_s"] / floor["tokens_per_s"]
        table["peak_mem_vs_floor"] = table["peak_rss_mb"] / floor["peak_rss_mb"]
        naive = table.set_index("method")["tokens_per_s"].get("naive")
        if naive is not None:
            table["speed_vs_naive"] = table["tokens_per_s"] / naive
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    print(f"extraction benchmark: {args.model}, {args.n} examples of {args.words} (CoarseWSD-20 if present)")
    print(table.round(3).to_string(index=False))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
