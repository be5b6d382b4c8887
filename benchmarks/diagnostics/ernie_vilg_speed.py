"""ERNIE-ViLG speed at the shapes recipe's size (width 128, 4 layers, 8x8 codes of 512, text of 40).

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/ernie_vilg_speed.py sampling [--batch 8 --repeats 3]
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/ernie_vilg_speed.py step [--batch 32 --repeats 5]

``sampling``: one 8x8 image per prompt (64 codes), KV-cached against the full-pass reference, the same
generator seed; checks that both draw the same codes, prints the median seconds of ``repeats`` runs.
``step``: one training step of both directions (text→image + image→text LM, AdamW) under the paper's
sparse schedule (row, row, column, conv; blocked kernels) and with every layer dense; median seconds.
Numbers are from a shared machine: read them as ratios within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.models.ernie_vilg.sampling import sample_image_codes

VOCAB, CODES, GRID, TEXT = 30522, 512, (8, 8), 40


def build(sparse: bool) -> ERNIEViLG:
    torch.manual_seed(0)
    return ERNIEViLG(
        vocab_size=VOCAB, num_codes=CODES, grid=GRID, dim=128, depth=4, num_heads=4, max_text_len=TEXT,
        sparse=sparse, kernel_size=3, code_dim=32,
    )  # fmt: skip


def prompts(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1996, 3000, (batch, 12), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, torch.ones_like(ids, dtype=torch.bool)


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bench_sampling(batch: int, repeats: int) -> None:
    model = build(sparse=True).eval()
    ids, mask = prompts(batch)
    results = {}
    for cached in (True, False):
        run = lambda c=cached: sample_image_codes(  # noqa: E731
            model, ids, mask, top_k=64, generator=torch.Generator().manual_seed(1), use_cache=c
        )
        results[cached] = timed(run, repeats)
    same = torch.equal(results[True][1], results[False][1])
    print(f"batch {batch}, 64 codes per image, same codes: {same}")
    print(f"  KV-cached : {results[True][0]:.3f} s  ({batch * 64 / results[True][0]:.0f} codes/s)")
    print(f"  full pass : {results[False][0]:.3f} s  ({batch * 64 / results[False][0]:.0f} codes/s)")
    print(f"  speed-up  : {results[False][0] / results[True][0]:.1f}x")


def bench_step(batch: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(2)
    ids, _ = prompts(batch)
    text = torch.cat([ids, torch.randint(1996, 3000, (batch, TEXT - ids.shape[1]), generator=g)], 1)
    mask = torch.ones_like(text, dtype=torch.bool)
    mask[:, 20:] = False
    codes = torch.randint(0, CODES, (batch, 64), generator=g)
    for sparse in (True, False):
        model = build(sparse).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model: ERNIEViLG = model, optimizer: torch.optim.Optimizer = optimizer) -> float:
            t2i = model(text, mask, codes, "text_to_image")
            i2t = model(text, mask, codes, "image_to_text")
            loss = torch.nn.functional.cross_entropy(
                model.image_logits(t2i.image_states).flatten(0, 1), codes.flatten()
            )
            targets = mask[:, 1:]
            loss = loss + torch.nn.functional.cross_entropy(
                model.text_logits(i2t.text_states[:, :-1][targets]), text[:, 1:][targets]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return float(loss)

        step()  # warm-up (block plans are cached per geometry)
        seconds, _ = timed(step, repeats)
        print(
            f"{'sparse schedule' if sparse else 'all dense     '} ({model.patterns}): {seconds:.3f} s/step, batch {batch}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["sampling", "step"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "sampling":
        bench_sampling(args.batch or 8, args.repeats or 3)
    else:
        bench_step(args.batch or 32, args.repeats or 5)


if __name__ == "__main__":
    main()
