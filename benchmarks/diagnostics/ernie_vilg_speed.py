"""ERNIE-ViLG speed at the shapes recipe's size (width 128, 4 layers, codes of 512, text of 40).

    OMP_NUM_THREADS=1 python benchmarks/diagnostics/ernie_vilg_speed.py sampling [--batch 8 --repeats 3]
    OMP_NUM_THREADS=1 python benchmarks/diagnostics/ernie_vilg_speed.py step [--batch 32 --repeats 5]
        [--grid 16 --kernel_size 5 --bf16]   # the shapes recipe's grid, conv window and precision

``sampling``: one 8x8 image per prompt (64 codes), KV-cached against the full-pass reference, the same
generator seed; checks that both draw the same codes, prints the median seconds of ``repeats`` runs.
``step``: one training step of both directions (text→image + image→text LM, AdamW) under the paper's
sparse schedule (row, row, column, conv; blocked kernels) and with every layer dense, the two models'
steps interleaved; median seconds. ``--grid`` (default 8: an 8x8 image), ``--kernel_size`` (the conv
window, default 3) and ``--bf16`` (CPU bf16 autocast, as the recipe trains) apply to ``step``.
Numbers are from a shared machine: read them as ratios within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.models.ernie_vilg.sampling import sample_image_codes

VOCAB, CODES, TEXT = 30522, 512, 40


def build(sparse: bool, grid: int = 8, kernel_size: int = 3) -> ERNIEViLG:
    torch.manual_seed(0)
    return ERNIEViLG(
        vocab_size=VOCAB, num_codes=CODES, grid=(grid, grid), dim=128, depth=4, num_heads=4, max_text_len=TEXT,
        sparse=sparse, kernel_size=kernel_size, code_dim=32,
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


def bench_step(batch: int, repeats: int, grid: int, kernel_size: int, bf16: bool) -> None:
    g = torch.Generator().manual_seed(2)
    ids, _ = prompts(batch)
    text = torch.cat([ids, torch.randint(1996, 3000, (batch, TEXT - ids.shape[1]), generator=g)], 1)
    mask = torch.ones_like(text, dtype=torch.bool)
    mask[:, 20:] = False
    codes = torch.randint(0, CODES, (batch, grid * grid), generator=g)
    steps, times = {}, {}
    for sparse in (True, False):
        model = build(sparse, grid, kernel_size).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model: ERNIEViLG = model, optimizer: torch.optim.Optimizer = optimizer) -> float:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                t2i = model(text, mask, codes, "text_to_image")
                i2t = model(text, mask, codes, "image_to_text")
                loss = torch.nn.functional.cross_entropy(
                    model.image_logits(t2i.image_states).flatten(0, 1).float(), codes.flatten()
                )
                targets = mask[:, 1:]
                loss = loss + torch.nn.functional.cross_entropy(
                    model.text_logits(i2t.text_states[:, :-1][targets]).float(), text[:, 1:][targets]
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        step()  # warm-up (block plans are cached per geometry)
        steps[sparse], times[sparse] = step, []
    for round_ in range(repeats):
        for sparse in (True, False) if round_ % 2 == 0 else (False, True):
            start = time.perf_counter()
            steps[sparse]()
            times[sparse].append(time.perf_counter() - start)
    precision = "bf16 autocast" if bf16 else "fp32"
    for sparse in (True, False):
        label = "sparse schedule" if sparse else "all dense      "
        print(
            f"{label}: {statistics.median(times[sparse]):.3f} s/step, batch {batch}, {grid}x{grid} codes, "
            f"conv window {kernel_size}, {precision}"
        )
    print(f"dense / sparse: {statistics.median(times[False]) / statistics.median(times[True]):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["sampling", "step"])
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--kernel_size", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.what == "sampling":
        bench_sampling(args.batch or 8, args.repeats or 3)
    else:
        bench_step(args.batch or 32, args.repeats or 5, args.grid, args.kernel_size, args.bf16)


if __name__ == "__main__":
    main()
