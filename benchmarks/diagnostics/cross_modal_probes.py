"""Diagnostic probes for the default recipe's ITM plateau (issue 2): which part of the problem is slow?

Each probe trains the default recipe's tiny ViLT (width 128, 4 layers, 4 heads, 64 px, patch 16;
AdamW lr 1e-3, betas (0.9, 0.98), batch 64) on one narrow task built from freshly generated shapes
scenes, and prints held-out accuracy every 50 steps:

- ``image-only``: constant text ``[CLS] [SEP]``; label = "the image contains a red object" (read from
  the pooled [CLS]). Tests the visual path alone.
- ``mask-colour``: single-object images, constant text "there is a [MASK] shape"; the MLM head must
  name the object's colour. Tests that text positions can read the image.
- ``itm-colour``: single-object images, text = the colour word alone (``--caption there`` for "there is
  a <colour> shape"); ITM against another image of the batch. Tests cross-modal *comparison*.
  ``--with-mask-colour`` adds the mask-colour MLM loss on a second batch each step (joint training).

    python benchmarks/diagnostics/cross_modal_probes.py image-only --steps 400
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

from vlp.datamodules.normalise import normalise_pixels
from vlp.datamodules.synth.render import render_scene
from vlp.datamodules.synth.scenes import sample_scene
from vlp.datamodules.transforms import ViltTransform
from vlp.models.embedders import ViTPatchEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.heads import ITMHead, MLMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.tokenizers import BUNDLED, load_tokenizer

WIDTH, BATCH, HELD_OUT = 128, 64, 512


def scenes(count: int, single: bool, seed: int) -> tuple[torch.Tensor, list[list[str]]]:
    """Images and the colours of their objects."""
    rng = np.random.default_rng(seed)
    transform = ViltTransform(64, 16)
    images, colours = [], []
    while len(images) < count:
        scene = sample_scene(rng, 64)
        if single and len(scene.objects) != 1:
            continue
        images.append(transform(render_scene(scene, 64, rng)))
        colours.append([obj.colour for obj in scene.objects])
    pixels = torch.stack(images)  # uint8, as the transform gives them: normalised as the model gets them
    return normalise_pixels(pixels, torch.ones(len(pixels), *pixels.shape[2:], dtype=torch.bool)), colours


def tiny_vilt() -> ViLT:
    return ViLT(
        TextEmbedder(dim=WIDTH),
        ViTPatchEmbedder(dim=WIDTH, patch_size=16, pos_grid=4),
        TransformerEncoder(dim=WIDTH, depth=4, num_heads=4),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("probe", choices=["image-only", "mask-colour", "itm-colour"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--caption", choices=["word", "there"], default="word")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-mask-colour", action="store_true", help="itm-colour plus mask-colour MLM")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(BUNDLED)
    images, colours = scenes(args.samples, single=args.probe != "image-only", seed=args.seed)
    train = args.samples - HELD_OUT
    model = tiny_vilt()
    head = MLMHead(WIDTH) if args.probe == "mask-colour" else ITMHead(WIDTH)
    colour_head = MLMHead(WIDTH)
    parameters = [*model.parameters(), *head.parameters()]
    if args.with_mask_colour:
        parameters += list(colour_head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, betas=(0.9, 0.98))

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoding = tokenizer(texts, padding="longest", return_tensors="pt")
        return encoding["input_ids"], encoding["attention_mask"].bool()

    def make_batch(index: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        n = len(index)
        if args.probe == "image-only":
            ids, mask = encode([""] * n)
            labels = torch.tensor([int("red" in colours[i]) for i in index.tolist()])
            return ids, mask, images[index], labels
        if args.probe == "mask-colour":
            ids, mask = encode(["there is a [MASK] shape"] * n)
            labels = torch.tensor(tokenizer.convert_tokens_to_ids([colours[i][0] for i in index.tolist()]))
            return ids, mask, images[index], labels
        negative = torch.rand(n, generator=generator) < 0.5
        other = index[(torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n]
        words = [colours[i][0] for i in index.tolist()]
        ids, mask = encode(words if args.caption == "word" else [f"there is a {w} shape" for w in words])
        return (
            ids,
            mask,
            torch.where(negative[:, None, None, None], images[other], images[index]),
            (~negative).long(),
        )

    def logits(ids: torch.Tensor, mask: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        out = model(ids, mask, pixels)
        if args.probe == "mask-colour":
            return head(out.text_states[:, int((ids[0] == tokenizer.mask_token_id).nonzero()[0, 0])])
        return head(out.pooled)

    generator = torch.Generator().manual_seed(args.seed)
    held_out = make_batch(torch.arange(train, args.samples), torch.Generator().manual_seed(args.seed + 1))
    for step in range(1, args.steps + 1):
        *inputs, labels = make_batch(torch.randint(0, train, (BATCH,), generator=generator), generator)
        loss = F.cross_entropy(logits(*inputs), labels)
        if args.with_mask_colour:
            index = torch.randint(0, train, (BATCH,), generator=generator)
            ids, mask = encode(["there is a [MASK] shape"] * BATCH)
            states = model(ids, mask, images[index]).text_states
            position = int((ids[0] == tokenizer.mask_token_id).nonzero()[0, 0])
            targets = torch.tensor(tokenizer.convert_tokens_to_ids([colours[i][0] for i in index.tolist()]))
            loss = loss + F.cross_entropy(colour_head(states[:, position]), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            with torch.no_grad():
                *inputs, labels = held_out
                accuracy = (logits(*inputs).argmax(-1) == labels).float().mean().item()
            print(
                f"{args.probe} step {step} train loss {loss.item():.3f} held-out acc {accuracy:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
