"""Does the default recipe's model read the image? Train its tiny ViLT on the shapes shards without
Lightning and report, every ``--eval-every`` steps on the val split: ITM accuracy, MLM accuracy, and the
accuracy on masked *colour* words with the true image vs. with another sample's image (equal = the
image is not used).

Same parts as ``configs/vilt/shapes_pretrain.yaml`` (width 128, 4 layers, 4 heads, 64 px, patch 16,
AdamW lr 1e-3 with 10 % warm-up and linear decay, two views: MLM on masked text with the own image, ITM
on clean text). The MLM targets come from :class:`vlp.datamodules.collate.PretrainCollator`:
``--mlm-prob`` for ordinary whole-word masking, ``--grounded-prob`` for grounded-word masking over
vocab.json's categories and attributes (``--grounded colours`` for the colour words only).

    python benchmarks/diagnostics/recipe_grounding.py --root data/shapes64 --steps 600 \
        --mlm-prob 0 --grounded-prob 1.0 --grounded colours --itm-weight 0

Decoded samples are cached in ``--cache`` (default /tmp/vlp_grounding) on first use.
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import torch
import webdataset as wds

from vlp.datamodules import normalise_batch
from vlp.datamodules.collate import PretrainCollator
from vlp.datamodules.decode import DecodedSample, SampleDecoder
from vlp.datamodules.synth.scenes import COLOUR_NAMES
from vlp.datamodules.transforms import ViltTransform
from vlp.models.embedders import ViTPatchEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.heads import ITMHead, MLMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.objectives import ITMObjective, MLMObjective
from vlp.tasks.optim import build_adamw, linear_warmup_decay, param_groups
from vlp.tokenizers import load_tokenizer


def load_split(root: Path, split: str, cache: Path) -> list[DecodedSample]:
    path = cache / f"{split}.pt"
    if path.exists():
        return [DecodedSample(**x) for x in torch.load(path, weights_only=False)]
    decode = SampleDecoder().bind(ViltTransform(64, 16))
    rows = []
    for sample in wds.WebDataset(sorted(glob.glob(str(root / split / "*.tar"))), shardshuffle=False):
        x = decode(sample)
        rows.append(dict(key=x.key, image=x.image, captions=x.captions, annotation={}, orig_size=x.orig_size))
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(rows, path)
    return [DecodedSample(**x) for x in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=Path("data/shapes64"))
    p.add_argument("--cache", type=Path, default=Path("/tmp/vlp_grounding"))
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mlm-prob", type=float, default=0.15)
    p.add_argument("--grounded-prob", type=float, default=0.0)
    p.add_argument("--grounded", choices=("vocab", "colours"), default="vocab")
    p.add_argument("--mlm-weight", type=float, default=1.0)
    p.add_argument("--itm-weight", type=float, default=1.0)
    p.add_argument("--no-pooler", action="store_true", help="ITM head on the [CLS] state, no dense+tanh")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    train, val = load_split(a.root, "train", a.cache), load_split(a.root, "val", a.cache)
    tokenizer = load_tokenizer()
    vocab = json.loads((a.root / "vocab.json").read_text())
    colours = [c for c in COLOUR_NAMES if len(tokenizer.tokenize(c)) == 1]
    colour_ids = torch.tensor(tokenizer.convert_tokens_to_ids(colours))
    grounded = colours if a.grounded == "colours" else [*vocab["categories"], *vocab["attributes"]]

    model = ViLT(TextEmbedder(30522, 128, 40), ViTPatchEmbedder(128, 16, 4), TransformerEncoder(128, 4, 4))
    if a.no_pooler:
        model.pooler.forward = lambda states: states[:, 0]
    mlm, itm = MLMObjective(MLMHead(128)), ITMObjective(ITMHead(128))
    parts = torch.nn.ModuleDict(dict(model=model, mlm=mlm, itm=itm))
    optimizer = build_adamw(param_groups(parts, a.lr, 0.01), a.lr, (0.9, 0.98), 1e-8)
    schedule = linear_warmup_decay(optimizer, int(0.1 * a.steps), a.steps, 0.0)
    collate = PretrainCollator(
        mlm_probability=a.mlm_prob,
        whole_word_masking=True,
        grounded_words=grounded if a.grounded_prob else None,
        grounded_mask_probability=a.grounded_prob,
    ).for_split(train=True, seed=a.seed)
    val_collate = PretrainCollator(mlm_probability=0.15, whole_word_masking=True).for_split(
        train=False, seed=123
    )
    generator = torch.Generator().manual_seed(7)
    val_batches = [normalise_batch(val_collate(val[i : i + 64], generator)) for i in range(0, len(val), 64)]

    def run(batch, text_ids, index):
        return model(text_ids, batch.text_mask, batch.pixels[index], batch.pixel_mask[index])

    @torch.no_grad()
    def evaluate() -> tuple[float, float, float, float]:
        parts.eval()
        itm_ok = n = mlm_ok = mlm_n = colour_true = colour_swap = colour_n = 0
        for b in val_batches:
            out = run(b, b.text_ids, b.itm_image_index)
            itm_ok += (itm.head(out.pooled).argmax(-1) == b.itm_labels).sum().item()
            n += len(b)
            labelled = b.mlm_labels != -100
            target = b.mlm_labels[labelled]
            is_colour = torch.isin(target, colour_ids)
            own = torch.arange(len(b))
            for index, true_image in ((own, True), (own.roll(1), False)):
                right = mlm.head(run(b, b.mlm_text_ids, index).text_states[labelled]).argmax(-1) == target
                if true_image:
                    mlm_ok += right.sum().item()
                    mlm_n += len(target)
                    colour_true += right[is_colour].sum().item()
                    colour_n += is_colour.sum().item()
                else:
                    colour_swap += right[is_colour].sum().item()
        parts.train()
        return itm_ok / n, mlm_ok / mlm_n, colour_true / max(colour_n, 1), colour_swap / max(colour_n, 1)

    order, cursor, start = torch.randperm(len(train), generator=generator), 0, time.time()
    for step in range(1, a.steps + 1):
        if cursor + a.batch > len(train):
            order, cursor = torch.randperm(len(train), generator=generator), 0
        b = normalise_batch(collate([train[i] for i in order[cursor : cursor + a.batch]]))
        cursor += a.batch
        loss = torch.zeros(())
        if a.mlm_weight and b.mlm_labels is not None and (b.mlm_labels != -100).any():
            loss = loss + a.mlm_weight * mlm(run(b, b.mlm_text_ids, torch.arange(len(b))), b).loss
        if a.itm_weight:
            loss = loss + a.itm_weight * itm(run(b, b.text_ids, b.itm_image_index), b).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % a.eval_every == 0 or step == a.steps:
            r = evaluate()
            print(
                f"step {step} ({time.time() - start:.0f} s) loss {loss.item():.3f} | val itm {r[0]:.3f} "
                f"mlm {r[1]:.3f} colour words: true image {r[2]:.3f}, swapped image {r[3]:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
