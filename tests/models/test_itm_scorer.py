"""ITMScorer: a ViLT over VQGAN codes with an ITM head scores (code grid, text) pairs and reranks samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_vqgan import tiny_vqgan

from conftest import TINY_DIM, TINY_VOCAB, make_tiny_vilt
from vlp.models.embedders import VQTokenEmbedder
from vlp.models.embedders.text import TextEmbedder
from vlp.models.ernie_vilg.itm_scorer import ITMScorer
from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.models.ernie_vilg.sampling import generate_images, rerank
from vlp.models.layers.heads import ITMHead, MLMHead
from vlp.models.layers.transformer import TransformerEncoder
from vlp.models.vilt import ViLT

GRID_CELLS = 16  # the tiny VQGAN: 16 px, factor 4 -> 4x4 codes, 32 codes


def vilt_over_codes(seed: int = 0, depth: int = 2) -> ViLT:
    torch.manual_seed(seed)
    return ViLT(
        TextEmbedder(vocab_size=TINY_VOCAB, dim=TINY_DIM, max_len=16),
        VQTokenEmbedder(tiny_vqgan(), dim=TINY_DIM),
        TransformerEncoder(dim=TINY_DIM, depth=depth, num_heads=4),
    )


def scorer(seed: int = 0, depth: int = 2) -> ITMScorer:
    model = vilt_over_codes(seed, depth)
    return ITMScorer(model, ITMHead(TINY_DIM))


def texts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 9, 10, 2, 0]])
    return ids, ids != 0


def test_fuse_equals_vilt_forward_on_the_pixels_the_codes_came_from() -> None:
    s = scorer()
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    codes = s.embedder.codes(pixels)
    ids, mask = texts()
    expected = s.model(ids, mask, pixels).pooled
    torch.testing.assert_close(s.fuse(codes, ids, mask), expected)
    logits = s.head(expected).log_softmax(-1)[:, 1]
    torch.testing.assert_close(s(codes, ids, mask), logits)
    assert s(codes, ids, mask).shape == (3,) and bool((s(codes, ids, mask) < 0).all())  # log-probabilities


def test_the_score_reads_the_codes_and_the_text() -> None:
    s = scorer()
    # a freshly initialised model is nearly flat (embeddings and head at std 0.02): make it sensitive
    torch.nn.init.normal_(s.head.fc.weight, std=1.0)
    torch.nn.init.normal_(s.embedder.code_embed.weight, std=1.0)
    torch.nn.init.normal_(s.model.text_embedder.word_embeddings.weight, std=1.0)
    codes = torch.randint(0, 32, (3, GRID_CELLS), generator=torch.Generator().manual_seed(0))
    ids, mask = texts()
    base = s(codes, ids, mask)
    other_codes = codes.clone()
    other_codes[0, :8] = (other_codes[0, :8] + 1) % 32
    changed = s(other_codes, ids, mask)
    assert abs(float(changed[0] - base[0])) > 1e-5 and torch.equal(changed[1:], base[1:])
    other_text = ids.clone()
    other_text[1, 1] = 11
    changed = s(codes, other_text, mask)
    assert abs(float(changed[1] - base[1])) > 1e-5 and torch.equal(changed[[0, 2]], base[[0, 2]])
    # padding is masked out: what a padded position holds does not matter
    padded = ids.clone()
    padded[1, 3:] = 42
    torch.testing.assert_close(s(codes, padded, mask), base)


def train_matching(s: ITMScorer, steps: int = 300, lr: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Teach "an all-k grid matches the caption [1, 3 + k, 2]" (k = 0..3): every other pairing is a negative.

    At this rate the problem is learnt whatever the float reduction order (1 or 2 threads: every match
    scores > 0.99, every mismatch < 0.01); at 2e-3 it sometimes stalls near chance on one thread count.
    """
    grids = torch.arange(4)[:, None].expand(4, GRID_CELLS).contiguous()
    captions = torch.stack([torch.tensor([1, 3 + k, 2]) for k in range(4)])
    codes = torch.cat([grids, grids.roll(1, 0), grids.roll(2, 0), grids.roll(3, 0)])  # every pairing
    ids = captions.repeat(4, 1)
    labels = torch.tensor([1] * 4 + [0] * 12)
    weights = torch.tensor([3.0] * 4 + [1.0] * 12)  # balance positives and negatives
    s.requires_grad_(True)
    s.embedder.vqgan.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in s.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        logits = s.head(s.fuse(codes, ids, None))
        loss = (torch.nn.functional.cross_entropy(logits, labels, reduction="none") * weights).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    s.requires_grad_(False)
    return grids, captions


def test_reranking_by_a_trained_itm_head_keeps_the_matching_grid() -> None:
    s = scorer()
    grids, captions = train_matching(s)
    candidates = grids[None].expand(2, 4, GRID_CELLS)  # every grid is a candidate for both prompts
    prompts = captions[[2, 1]]
    scores = s(candidates.flatten(0, 1), prompts.repeat_interleave(4, 0)).view(2, 4)
    matching = scores.exp()[[0, 1], [2, 1]]
    assert bool((matching > 0.9).all()), scores.exp()  # the head learnt the matching
    picked = rerank(candidates, scores)
    assert picked.best_index.tolist() == [2, 1]
    assert torch.equal(picked.best, grids[[2, 1]])


def test_generate_images_with_the_itm_scorer_keeps_the_candidate_it_scores_highest() -> None:
    torch.manual_seed(0)
    generator_model = ERNIEViLG(
        vocab_size=TINY_VOCAB, num_codes=32, grid=(4, 4), dim=32, depth=2, num_heads=4, max_text_len=8
    ).eval()
    s = scorer()
    ids, mask = texts()
    out = generate_images(
        generator_model, ids, mask, num_candidates=4, generator=torch.Generator().manual_seed(0), scorer=s
    )
    expected = s(out.codes.flatten(0, 1), ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0)).view(
        3, 4
    )
    torch.testing.assert_close(out.scores, expected)
    assert torch.equal(out.best_index, expected.argmax(1))
    # the same seed draws the same candidates whichever scorer ranks them
    own = generate_images(
        generator_model, ids, mask, num_candidates=4, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(own.codes, out.codes)


def pretrain_checkpoint(path: Path, model: ViLT, head: ITMHead) -> None:
    """A PretrainTask checkpoint's layout: the model, the ITM and the MLM objectives' heads."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state |= {f"objectives.itm.head.{k}": v for k, v in head.state_dict().items()}
    mlm = MLMHead(TINY_DIM, vocab_size=TINY_VOCAB)
    state |= {f"objectives.mlm.head.{k}": v for k, v in mlm.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 3}, path)


def test_loads_a_pretrain_checkpoint_strictly_and_names_mismatches(tmp_path: Path) -> None:
    source, head = vilt_over_codes(seed=1), ITMHead(TINY_DIM)
    pretrain_checkpoint(tmp_path / "itm.ckpt", source, head)
    s = ITMScorer(vilt_over_codes(seed=2), ITMHead(TINY_DIM), checkpoint=str(tmp_path / "itm.ckpt"))
    for name, value in source.state_dict().items():
        torch.testing.assert_close(s.model.state_dict()[name], value, msg=name)
    torch.testing.assert_close(s.head.fc.weight, head.fc.weight)
    assert not any(p.requires_grad for p in s.parameters()) and not s.train().training
    pretrain_checkpoint(tmp_path / "deep.ckpt", vilt_over_codes(depth=3), head)
    with pytest.raises(KeyError, match=r"unexpected \['model\.encoder\.blocks\.2\."):
        ITMScorer(vilt_over_codes(depth=2), ITMHead(TINY_DIM), checkpoint=str(tmp_path / "deep.ckpt"))
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "no_itm.ckpt"
    )
    with pytest.raises(KeyError, match=r"no_itm\.ckpt: no 'objectives\.itm\.head\.\*' keys"):
        ITMScorer(vilt_over_codes(), ITMHead(TINY_DIM), checkpoint=str(tmp_path / "no_itm.ckpt"))
    with pytest.raises(FileNotFoundError, match=r"nowhere\.ckpt not found"):
        ITMScorer(vilt_over_codes(), ITMHead(TINY_DIM), checkpoint=str(tmp_path / "nowhere.ckpt"))


def test_bad_parts_and_codes_are_named() -> None:
    with pytest.raises(
        ValueError, match="needs a ViLT with a VQTokenEmbedder, got ViLT with ViTPatchEmbedder"
    ):
        ITMScorer(make_tiny_vilt(), ITMHead(TINY_DIM))
    with pytest.raises(ValueError, match="head width 16"):
        ITMScorer(vilt_over_codes(), ITMHead(16))
    s = scorer()
    ids, mask = texts()
    with pytest.raises(ValueError, match=r"codes must be \[M, 16\]"):
        s(torch.zeros(3, 9, dtype=torch.long), ids, mask)
    with pytest.raises(ValueError, match=r"code ids must be in \[0, 32\)"):
        s(torch.full((3, 16), 32), ids, mask)
    with pytest.raises(ValueError, match="2 code grids for 3 texts"):
        s(torch.zeros(2, 16, dtype=torch.long), ids, mask)
