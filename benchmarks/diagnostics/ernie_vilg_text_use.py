"""How much an ERNIE-ViLG run's text→image likelihood uses the prompt: val NLL with the true, a shuffled and
the null prompt.

    python benchmarks/diagnostics/ernie_vilg_text_use.py RUN_DIR [--checkpoint last.ckpt] [--batches 8]

Builds the run's task and data from ``RUN_DIR/config.yaml`` (the folder read as it is, no loader workers),
loads ``RUN_DIR/checkpoints/<checkpoint>`` and scores the first ``batches`` val batches three times, each
image's codes under:

- ``true``: its own caption (what ``val/t2i_nll`` measures);
- ``shuffled``: the next sample's caption in the batch (a prompt about another picture);
- ``null``: the null prompt ``[CLS] [SEP]`` (what classifier-free guidance subtracts; a model trained
  without prompt dropout never saw it).

``null - true`` is the information the prompt gives the model, in nats per code (times the grid's cells: per
image); ``shuffled - true`` how much a wrong prompt misleads it.
"""

from __future__ import annotations

import argparse
from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser
from lightning import LightningDataModule, LightningModule

from vlp.datamodules import normalise_batch
from vlp.models.ernie_vilg.sampling import null_prompts


def build(run: Path, checkpoint: str) -> tuple[LightningModule, LightningDataModule]:
    """The run's task with the checkpoint's weights (strict) and its data module, set up for validation."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["init_args"].update(synth=None, num_workers=0)
    parser = ArgumentParser()
    parser.add_subclass_arguments(LightningModule, "model")
    parser.add_subclass_arguments(LightningDataModule, "data")
    parts = parser.instantiate(parser.parse_object({"model": config["model"], "data": config["data"]}))
    state = torch.load(run / "checkpoints" / checkpoint, map_location="cpu", weights_only=False)
    parts.model.load_state_dict(state["state_dict"])
    parts.data.setup("validate")
    return parts.model.eval(), parts.data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--checkpoint", default="last.ckpt")
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args()
    task, data = build(args.run, args.checkpoint)
    totals = {"true": 0.0, "shuffled": 0.0, "null": 0.0}
    codes_seen = 0
    with torch.no_grad():
        for raw in islice(data.val_dataloader(), args.batches):
            batch = task.with_codes(normalise_batch(raw))
            ids, mask, codes = batch.caption_ids, batch.caption_mask, batch.image_codes
            following = torch.roll(torch.arange(len(ids)), -1)
            null_ids, null_mask = null_prompts(
                len(ids), ids.shape[1], task.bos_id, task.eos_id, task.pad_id, ids.device
            )
            prompts = {
                "true": (ids, mask),
                "shuffled": (ids[following], mask[following]),
                "null": (null_ids, null_mask.to(mask.dtype)),
            }
            for name, (text_ids, text_mask) in prompts.items():
                states = task.model(text_ids, text_mask, codes, "text_to_image").image_states
                logits = task.model.image_logits(states).flatten(0, 1).float()
                totals[name] += F.cross_entropy(logits, codes.flatten(), reduction="sum").item()
            codes_seen += codes.numel()
    nll = {name: total / codes_seen for name, total in totals.items()}
    cells = task.model.grid[0] * task.model.grid[1]
    print(
        f"{args.run / 'checkpoints' / args.checkpoint}: {codes_seen // cells} val images, {cells} codes each"
    )
    for name, value in nll.items():
        print(f"  t2i NLL, {name:8s} prompt: {value:.4f} nats/code")
    for name in ("null", "shuffled"):
        gap = nll[name] - nll["true"]
        print(f"  {name} - true: {gap:+.4f} nats/code, {gap * cells:+.2f} nats/image")


if __name__ == "__main__":
    main()
