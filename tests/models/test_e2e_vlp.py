"""E2E-VLP assembly on tiny random parts: the encoder pass feeds MLM/ITM unchanged, the object queries
feed the detection objective, captions feed the captioning objective, all three learn a fixed batch;
one decoder serves both with separate heads; DETR-style positions reach keys, not values; decoding
agrees with teacher forcing; the visual embedder swaps (grid <-> patch) in the config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from conftest import TINY_VOCAB
from vlp.batch import Batch, Targets
from vlp.models.e2e_vlp.model import E2EVLP, ObjectQueryOutput, box_sine_embedding
from vlp.models.embedders import CNNGridEmbedder, ViTPatchEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.layers.decoder import TransformerDecoder
from vlp.models.layers.heads import DetectionHead, ITMHead, MLMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT
from vlp.objectives import CaptioningObjective, DetectionObjective, ITMObjective, MLMObjective

DIM = 32
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
BOS, EOS, PAD = 1, 2, 0
TINY_CNN = "test_resnet"


def make_e2e(
    visual: str = "grid",
    every_layer: bool = True,
    tie_caption_head: bool = False,
    anchor_queries: bool = False,
) -> E2EVLP:
    """Tiny parts; the grid comes from timm's ``test_resnet`` (0.4 M parameters, 96 channels at stride
    32), so a few dozen optimiser steps take seconds."""
    embedder = (
        CNNGridEmbedder(dim=DIM, backbone=TINY_CNN)
        if visual == "grid"
        else ViTPatchEmbedder(dim=DIM, patch_size=16, pos_grid=4)
    )
    return E2EVLP(
        TextEmbedder(vocab_size=TINY_VOCAB, dim=DIM, max_len=16),
        embedder,
        TransformerEncoder(dim=DIM, depth=2, num_heads=4),
        TransformerDecoder(dim=DIM, depth=2, num_heads=4),
        num_queries=6,
        tie_caption_head=tie_caption_head,
        anchor_queries=anchor_queries,
        pos_every_layer=every_layer,
    )


def fixed_batch(size: int = 4) -> Batch:
    """64 px images (the second one padded), texts with MLM labels, ITM labels, boxes, captions."""
    generator = torch.Generator().manual_seed(7)
    pixels = torch.randn(size, 3, 64, 64, generator=generator)
    pixel_mask = torch.ones(size, 64, 64, dtype=torch.bool)
    pixel_mask[1, 32:, :] = False
    text_ids = torch.randint(5, TINY_VOCAB, (size, 8), generator=generator)
    text_mask = torch.ones(size, 8, dtype=torch.bool)
    text_mask[-1, 6:] = False
    mlm_labels = torch.full((size, 8), -100)
    mlm_labels[:, 2] = text_ids[:, 2]
    mlm_labels[:, 4] = text_ids[:, 4]
    mlm_text_ids = text_ids.clone()
    mlm_text_ids[:, [2, 4]] = 3  # [MASK]
    captions = torch.randint(5, TINY_VOCAB, (size, 7), generator=generator)
    captions[:, 0] = BOS
    lengths = torch.tensor([7, 5, 6, 4])[:size]
    caption_mask = torch.arange(7)[None] < lengths[:, None]
    captions[torch.arange(size), lengths - 1] = EOS
    captions[~caption_mask] = PAD
    targets = [
        Targets(
            torch.rand(n, 2, generator=generator)
            .mul(0.5)
            .add(0.25)
            .repeat(1, 2)
            .mul(torch.tensor([1, 1, 0.5, 0.5])),
            torch.randint(0, 3, (n,), generator=generator),
            (torch.rand(n, 2, generator=generator) > 0.5).float(),
        )
        for n in [1, 2, 2, 1][:size]
    ]
    return Batch(
        keys=[str(i) for i in range(size)],
        pixels=pixels,
        pixel_mask=pixel_mask,
        text_ids=text_ids,
        text_mask=text_mask,
        mlm_text_ids=mlm_text_ids,
        mlm_labels=mlm_labels,
        itm_labels=torch.tensor([1, 0, 1, 0])[:size],
        targets=targets,
        caption_ids=captions,
        caption_mask=caption_mask,
    )


def train(parameters: list[nn.Parameter], loss_fn, steps: int, lr: float = 1e-3) -> list[float]:
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_encode_feeds_mlm_and_itm_objectives_which_learn_a_fixed_batch() -> None:
    model, batch = make_e2e(), fixed_batch()
    mlm, itm = MLMObjective(MLMHead(DIM, TINY_VOCAB)), ITMObjective(ITMHead(DIM))

    def loss() -> torch.Tensor:
        masked = model(batch.mlm_text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        clean = model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        return mlm(masked, batch).loss + itm(clean, batch).loss

    params = [*model.parameters(), *mlm.parameters(), *itm.parameters()]
    losses = train(params, loss, steps=20, lr=3e-3)
    assert losses[-1] < 0.6 * losses[0], losses


def test_object_queries_feed_the_detection_objective_which_learns_a_fixed_batch() -> None:
    model, batch = make_e2e(), fixed_batch()
    detection = DetectionObjective(DetectionHead(DIM, num_classes=3, num_attributes=2))
    decoded = model.detect(model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask))
    assert decoded.query_states.shape == (2, 4, 6, DIM)  # [layers, B, queries, D]: aux losses see layer 0

    def loss() -> torch.Tensor:
        fusion = model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        return detection(model.detect(fusion), batch).loss

    losses = train([*model.parameters(), *detection.parameters()], loss, steps=30, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0], losses


def test_anchored_queries_carry_their_reference_boxes_which_the_loss_trains() -> None:
    torch.manual_seed(0)
    model, batch = make_e2e(anchor_queries=True), fixed_batch()
    detection = DetectionObjective(DetectionHead(DIM, num_classes=3, num_attributes=2))
    fusion = model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
    decoded = model.detect(fusion)
    assert isinstance(decoded, ObjectQueryOutput)
    torch.testing.assert_close(decoded.reference_boxes, model.reference_boxes.expand(2, 4, 6, 4))
    centres = model.reference_boxes.detach().sigmoid()
    assert (centres[:, 2:] - 0.25).abs().max() < 1e-6 and centres[:, :2].std() > 0.1  # spread, 0.25 wide
    detection(decoded, batch).loss.backward()
    # the reference boxes are trained through the boxes (offsets) and the query positions (anchor MLP)
    assert model.reference_boxes.grad.abs().min() > 0
    assert model.anchor_pos[0].weight.grad.abs().sum() > 0
    # moving one query's reference box moves that query's position: its states change
    with torch.no_grad():
        before = model.detect(fusion).query_states
        model.reference_boxes[2, 0] += 1.0
        after = model.detect(fusion).query_states
    assert not torch.allclose(before[:, :, 2], after[:, :, 2])

    def loss() -> torch.Tensor:
        fusion = model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        return detection(model.detect(fusion), batch).loss

    losses = train([*model.parameters(), *detection.parameters()], loss, steps=30, lr=3e-3)
    assert losses[-1] < 0.7 * losses[0], losses


def test_query_groups_train_apart_and_evaluation_runs_the_first_group_alone() -> None:
    torch.manual_seed(0)
    batch = fixed_batch()
    grouped = E2EVLP(
        TextEmbedder(vocab_size=TINY_VOCAB, dim=DIM, max_len=16),
        CNNGridEmbedder(dim=DIM, backbone=TINY_CNN),
        TransformerEncoder(dim=DIM, depth=2, num_heads=4),
        TransformerDecoder(dim=DIM, depth=2, num_heads=4),
        num_queries=3,
        anchor_queries=True,
        query_groups=2,
    )
    fusion = grouped(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
    training = grouped.detect(fusion)
    assert training.groups == 2 and training.query_states.shape == (2, 4, 6, DIM)
    torch.testing.assert_close(training.reference_boxes[0, 0, :3], training.reference_boxes[0, 0, 3:])
    # the groups do not see each other: changing group 1's queries leaves group 0's states as they were
    with torch.no_grad():
        grouped.query_embed.weight[3:] += 1.0
    again = grouped.detect(fusion).query_states
    torch.testing.assert_close(again[:, :, :3], training.query_states[:, :, :3])
    assert not torch.allclose(again[:, :, 3:], training.query_states[:, :, 3:])
    grouped.eval()
    evaluated = grouped.detect(fusion)
    assert evaluated.groups == 1 and evaluated.query_states.shape == (2, 4, 3, DIM)
    torch.testing.assert_close(evaluated.query_states, training.query_states[:, :, :3])


def test_box_sine_embedding_shares_the_grid_positions_phases() -> None:
    boxes = torch.tensor([[0.25, 0.5, 0.1, 1.0]])
    embedding = box_sine_embedding(boxes, 8)
    assert embedding.shape == (1, 32)
    angle = 2 * math.pi * 0.25  # cx at the lowest frequency (1): sin, cos of 2 pi cx
    torch.testing.assert_close(embedding[0, :2], torch.tensor([math.sin(angle), math.cos(angle)]))
    with pytest.raises(ValueError, match="even"):
        box_sine_embedding(boxes, 7)


def test_captions_feed_the_captioning_objective_which_learns_a_fixed_batch() -> None:
    model, batch = make_e2e(), fixed_batch()
    captioning = CaptioningObjective(label_smoothing=0.1)

    def loss() -> torch.Tensor:
        memory = model(None, None, batch.pixels, batch.pixel_mask)  # the image alone
        return captioning(model.decode_captions(memory, batch.caption_ids, batch.caption_mask), batch).loss

    losses = train(list(model.parameters()), loss, steps=30, lr=3e-3)
    assert losses[-1] < 0.5 * losses[0], losses


def test_one_decoder_serves_both_tasks_each_with_its_own_head() -> None:
    model, batch = make_e2e(), fixed_batch(2)
    fusion = model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
    DetectionObjective(DetectionHead(DIM, num_classes=3, num_attributes=2))(
        model.detect(fusion), batch
    ).loss.backward()
    # (layer 0's self-attention gets nothing from the object queries: their content starts at zero,
    # so its values are all zero, as in DETR; the cross-attention is shared work from the first layer)
    shared = model.decoder.layers[0].cross_attn.qkv.weight
    assert shared.grad.abs().sum() > 0 and model.query_embed.weight.grad.abs().sum() > 0
    assert model.caption_head.weight.grad is None
    model.zero_grad(set_to_none=True)
    fusion = model(None, None, batch.pixels, batch.pixel_mask)
    CaptioningObjective()(
        model.decode_captions(fusion, batch.caption_ids, batch.caption_mask), batch
    ).loss.backward()
    assert shared.grad.abs().sum() > 0 and model.caption_head.weight.grad.abs().sum() > 0
    assert model.query_embed.weight.grad is None


def test_padding_in_text_pixels_and_captions_changes_no_real_output() -> None:
    model, batch = make_e2e().eval(), fixed_batch()
    dirty_text = batch.text_ids.clone()
    dirty_text[~batch.text_mask] = 9
    dirty_pixels = batch.pixels.clone()
    dirty_pixels[1, :, 32:] = 30.0
    dirty_captions = batch.caption_ids.clone()
    dirty_captions[~batch.caption_mask] = 11
    with torch.no_grad():
        clean = model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        dirty = model(dirty_text, batch.text_mask, dirty_pixels, batch.pixel_mask)
        torch.testing.assert_close(dirty.pooled, clean.pooled)
        torch.testing.assert_close(model.detect(dirty).query_states, model.detect(clean).query_states)
        real = batch.caption_mask
        clean_caption = model.decode_captions(clean, batch.caption_ids, batch.caption_mask).states
        dirty_caption = model.decode_captions(dirty, dirty_captions, batch.caption_mask).states
        torch.testing.assert_close(dirty_caption[real], clean_caption[real])


def test_every_layer_positions_reach_queries_and_keys_never_values() -> None:
    """Tokens of one content at different positions: DETR-style, every value is the same, so every
    output is too; added once at the input (ViLT-style) the positions become content."""
    torch.manual_seed(0)
    content = torch.randn(1, 1, DIM).expand(2, 5, DIM)
    pos = torch.randn(2, 5, DIM)
    encoder = TransformerEncoder(dim=DIM, depth=2, num_heads=4).eval()
    out = encoder(content, None, pos=pos)
    torch.testing.assert_close(out, out[:, :1].expand_as(out))
    once = encoder(content + pos)
    assert not torch.allclose(once[:, 0], once[:, 1])
    # zero positions are no positions: the same function (another projection order, so a tolerance)
    x = torch.randn(2, 5, DIM)
    torch.testing.assert_close(encoder(x, None, pos=torch.zeros_like(x)), encoder(x), atol=1e-5, rtol=1e-5)


def test_pos_every_layer_chooses_where_positions_go() -> None:
    batch = fixed_batch(2)
    for every_layer in (True, False):
        model = make_e2e(every_layer=every_layer).eval()
        assert model.pos_every_layer is every_layer
        with torch.no_grad():
            fusion = model(batch.text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
            memory, mask, pos = model.memory(fusion)
        assert memory.shape == (2, 8 + 4, DIM) and mask.tolist()[1][8:] == [True, True, False, False]
        if every_layer:
            assert pos is not None and pos[:, :8].abs().sum() == 0  # text carries no visual position
            torch.testing.assert_close(pos[:, 8:], fusion.visual.pos)
        else:
            assert pos is None


def test_decoding_agrees_with_teacher_forcing_and_the_cache_changes_nothing() -> None:
    torch.manual_seed(3)
    model, batch = make_e2e().eval(), fixed_batch(3)
    with torch.no_grad():
        fusion = model(None, None, batch.pixels, batch.pixel_mask)
        greedy = model.generate_captions(fusion, BOS, EOS, PAD, max_len=8)
        uncached = model.generate_captions(fusion, BOS, EOS, PAD, max_len=8, use_cache=False)
        assert greedy.sequences.tolist() == uncached.sequences.tolist()
        beam = model.generate_captions(fusion, BOS, EOS, PAD, max_len=8, num_beams=3, alpha=0.6)
        beam_uncached = model.generate_captions(
            fusion, BOS, EOS, PAD, max_len=8, num_beams=3, alpha=0.6, use_cache=False
        )
        assert beam.sequences.tolist() == beam_uncached.sequences.tolist()
        torch.testing.assert_close(beam.scores, beam_uncached.scores, atol=1e-4, rtol=1e-4)
        assert (beam.scores >= greedy.log_probs / ((5 + greedy.lengths - 1) / 6) ** 0.6 - 1e-4).all()
        one = model.generate_captions(fusion, BOS, EOS, PAD, max_len=8, num_beams=1)
        assert one.sequences.tolist() == greedy.sequences.tolist()
        # the greedy tokens' log-probabilities under teacher forcing add up to what decoding reports
        sequences = greedy.sequences
        mask = torch.arange(sequences.shape[1])[None] < greedy.lengths[:, None]
        log_probs = model.caption_logits(fusion, sequences, mask).log_softmax(-1)
        chosen = log_probs[:, :-1].gather(2, sequences[:, 1:, None])[..., 0]
        expected = (chosen * mask[:, 1:]).sum(1)
        torch.testing.assert_close(greedy.log_probs, expected, atol=1e-4, rtol=1e-4)
        assert (chosen.exp() * mask[:, 1:] >= log_probs[:, :-1].exp().amax(-1) * mask[:, 1:] - 1e-6).all()
    with pytest.raises(ValueError, match="max_len"):
        model.generate_captions(fusion, BOS, EOS, PAD, max_len=17)


def test_tied_caption_head_is_the_word_embedding_table() -> None:
    tied, untied = make_e2e(visual="patch", tie_caption_head=True), make_e2e(visual="patch")
    assert tied.caption_head.weight is tied.text_embedder.word_embeddings.weight
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(tied) == TINY_VOCAB * DIM


def test_parts_of_different_width_are_refused() -> None:
    with pytest.raises(ValueError, match="decoder"):
        E2EVLP(
            TextEmbedder(vocab_size=TINY_VOCAB, dim=DIM),
            ViTPatchEmbedder(dim=DIM, patch_size=16, pos_grid=4),
            TransformerEncoder(dim=DIM, depth=1, num_heads=4),
            TransformerDecoder(dim=2 * DIM, depth=1, num_heads=4),
        )
    with pytest.raises(ValueError, match="text_mask"):
        make_e2e(visual="patch")(torch.ones(1, 3, dtype=torch.long), None, torch.randn(1, 3, 32, 32))


def tiny_config(assembly: str, embedder: dict) -> dict:
    parts = {
        "text_embedder": {
            "class_path": "vlp.models.embedders.text.TextEmbedder",
            "init_args": {"vocab_size": TINY_VOCAB, "dim": DIM, "max_len": 16},
        },
        "visual_embedder": embedder,
        "encoder": {
            "class_path": "vlp.models.layers.transformer.TransformerEncoder",
            "init_args": {"dim": DIM, "depth": 1, "num_heads": 4},
        },
    }
    if assembly == "E2EVLP":
        parts["decoder"] = {
            "class_path": "vlp.models.layers.decoder.TransformerDecoder",
            "init_args": {"dim": DIM, "depth": 1, "num_heads": 4},
        }
        parts["num_queries"] = 4
    module = "vlp.models.e2e_vlp.model" if assembly == "E2EVLP" else "vlp.models.vilt"
    return {"class_path": f"{module}.{assembly}", "init_args": parts}


GRID = {
    "class_path": "vlp.models.embedders.CNNGridEmbedder",
    "init_args": {"dim": DIM, "backbone": TINY_CNN},
}
PATCH = {
    "class_path": "vlp.models.embedders.ViTPatchEmbedder",
    "init_args": {"dim": DIM, "patch_size": 16, "pos_grid": 4},
}


@pytest.mark.parametrize("assembly", ["E2EVLP", "ViLT"])
def test_swapping_the_embedder_in_the_config_runs_both_assemblies(assembly: str) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "model")
    batch = fixed_batch(2)
    mlm = MLMObjective(MLMHead(DIM, TINY_VOCAB))
    image_tokens = {}
    for name, embedder in (("grid", GRID), ("patch", PATCH)):
        config = parser.parse_object({"model": tiny_config(assembly, embedder)})
        model = parser.instantiate_classes(config).model
        assert isinstance(model, E2EVLP if assembly == "E2EVLP" else ViLT)
        fusion = model(batch.mlm_text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        loss = mlm(fusion, batch).loss
        if assembly == "E2EVLP":
            loss = (
                loss
                + CaptioningObjective()(
                    model.decode_captions(fusion, batch.caption_ids, batch.caption_mask), batch
                ).loss
            )
            detection = DetectionObjective(DetectionHead(DIM, num_classes=3, num_attributes=2))
            loss = loss + detection(model.detect(fusion), batch).loss
        loss.backward()
        assert torch.isfinite(loss)
        visual_grads = [p.grad for p in model.visual_embedder.parameters() if p.grad is not None]
        assert visual_grads and sum(g.abs().sum() for g in visual_grads) > 0
        image_tokens[name] = (fusion.image_states.shape[1], fusion.visual.num_prefix)
    assert image_tokens == {"grid": (4, 0), "patch": (17, 1)}  # 2x2 grid cells; [CLS] + 4x4 patches


@pytest.mark.filterwarnings("ignore")
def test_paper_config_has_the_paper_sizes() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(E2EVLP, "model")
    config = parser.parse_args(
        [
            f"--model={CONFIGS / 'model/e2e_vlp_paper.yaml'}",
            "--model.init_args.visual_embedder.init_args.pretrained=false",  # no download in tests
        ]
    )
    model = parser.instantiate_classes(config).model
    assert model.dim == 256 and model.pos_every_layer
    assert len(model.encoder.blocks) == 6 and len(model.decoder.layers) == 6
    assert model.encoder.blocks[0].mlp.fc1.out_features == 1024
    assert model.decoder.layers[0].mlp.fc1.out_features == 1024
    assert model.decoder.layers[0].self_attn.num_heads == 8 and model.encoder.blocks[0].attn.num_heads == 8
    assert model.query_embed.num_embeddings == 100
    assert model.visual_embedder.channels == 2048 and model.visual_embedder.stride == 32
    assert model.visual_embedder.freeze_bn
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.visual_embedder.modules())
