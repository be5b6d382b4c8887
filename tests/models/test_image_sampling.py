"""ERNIE-ViLG generation: logit filters, cached == uncached sampling and captioning, reranking."""

from __future__ import annotations

import pytest
import torch

from vlp.models.ernie_vilg.model import ERNIEViLG
from vlp.models.ernie_vilg.sampling import (
    caption_images,
    contrastive_terms,
    filter_logits,
    generate_images,
    guided_logits,
    image_log_likelihood,
    implicit_classifier_scores,
    null_prompts,
    prompt_log_likelihood,
    prompt_log_likelihoods,
    rerank,
    sample_image_codes,
)

VOCAB, CODES, GRID = 12, 8, (3, 3)
BOS, EOS = 1, 2


def tiny(patterns: list[str] | None = None, seed: int = 0) -> ERNIEViLG:
    torch.manual_seed(seed)
    return ERNIEViLG(
        vocab_size=VOCAB,
        num_codes=CODES,
        grid=GRID,
        dim=32,
        depth=4,
        num_heads=4,
        max_text_len=8,
        patterns=patterns,
        kernel_size=3,
    ).eval()


def trained_captioner(grids: torch.Tensor, captions: torch.Tensor, steps: int) -> ERNIEViLG:
    """A tiny model (seed 0) trained on image→text only, to caption ``grids`` with ``captions``; in eval."""
    torch.manual_seed(0)
    model = tiny().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        states = model(captions, None, grids, "image_to_text").text_states[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            model.text_logits(states).flatten(0, 1), captions[:, 1:].flatten()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_top_k_keeps_exactly_the_k_largest() -> None:
    logits = torch.tensor([[0.1, 2.0, -1.0, 3.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False], [True, True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_k=10)).all()


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p)).tolist()[0]  # noqa: E731
    assert kept(0.4) == [False, True, False, False]  # 0.5 alone reaches 0.4
    assert kept(0.75) == [False, True, False, True]  # 0.5 + 0.3
    assert kept(0.9) == [False, True, True, True]  # 0.5 + 0.3 + 0.15
    assert kept(1.0) == [True, True, True, True]
    assert kept(0.01) == [False, True, False, False]  # the most probable token always stays
    # top-k first, then the nucleus of what is left
    assert torch.isfinite(filter_logits(logits, top_k=3, top_p=0.9)).tolist()[0] == [False, True, True, True]
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=0.0)


@pytest.mark.parametrize("patterns", [["dense"] * 4, None])
def test_cached_sampling_equals_uncached_under_the_same_seed(patterns: list[str] | None) -> None:
    model = tiny(patterns)
    text = torch.tensor([[BOS, 5, 6, 7, EOS], [BOS, 8, EOS, 0, 0]])
    mask = text != 0
    runs = [
        sample_image_codes(
            model, text, mask, temperature=1.5, top_k=6, top_p=0.95,
            generator=torch.Generator().manual_seed(3), use_cache=cached,
        )
        for cached in (True, False)
    ]  # fmt: skip
    assert torch.equal(runs[0], runs[1])
    other = sample_image_codes(model, text, mask, temperature=1.5, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other, runs[0])  # the draws depend on the generator


def test_low_temperature_sampling_is_greedy() -> None:
    model = tiny()
    text = torch.tensor([[BOS, 5, 6, EOS]])
    codes = sample_image_codes(model, text, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    states = model(text, None, codes, "text_to_image").image_states
    assert torch.equal(model.image_logits(states).argmax(-1), codes)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_captioning_equals_uncached(num_beams: int) -> None:
    model = tiny()
    codes = torch.randint(0, CODES, (2, 9), generator=torch.Generator().manual_seed(0))
    outs = [
        caption_images(model, codes, BOS, EOS, 0, max_len=7, num_beams=num_beams, use_cache=cached)
        for cached in (True, False)
    ]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    torch.testing.assert_close(outs[0].log_probs, outs[1].log_probs, rtol=1e-4, atol=1e-4)


def test_prompt_log_likelihood_sums_the_real_target_tokens() -> None:
    model = tiny()
    codes = torch.randint(0, CODES, (2, 9), generator=torch.Generator().manual_seed(1))
    text = torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, 0]])
    mask = text != 0
    got = prompt_log_likelihood(model, codes, text, mask)
    log_probs = model.text_logits(model(text, mask, codes, "image_to_text").text_states).log_softmax(-1)
    expected = [
        sum(log_probs[row, t, text[row, t + 1]] for t in range(int(mask[row].sum()) - 1)) for row in range(2)
    ]
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("patterns", [None, ["dense"] * 4])
@pytest.mark.parametrize("max_pairs", [2, 512])
def test_the_likelihood_table_scores_every_text_under_every_image(
    patterns: list[str] | None, max_pairs: int
) -> None:
    """One cached image pass with the texts appended equals a full pass per (image, text) pair; the
    tolerance covers the cached pass summing attention over fewer (unmasked) keys."""
    model = tiny(patterns)
    codes = torch.randint(0, CODES, (3, 9), generator=torch.Generator().manual_seed(2))
    text = torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, 0], [BOS, 9, 4, 3]])
    mask = text != 0
    table = prompt_log_likelihoods(model, codes, text, mask, max_pairs=max_pairs)
    assert table.shape == (3, 3)
    expected = torch.stack(
        [prompt_log_likelihood(model, codes[m : m + 1].expand(3, 9), text, mask) for m in range(3)]
    )
    torch.testing.assert_close(table, expected, rtol=1e-5, atol=1e-5)


def test_the_likelihood_table_refuses_texts_it_cannot_score() -> None:
    model = tiny()
    codes = torch.zeros(1, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="real tokens first"):
        prompt_log_likelihoods(model, codes, torch.tensor([[BOS, 0, 5]]), torch.tensor([[True, False, True]]))
    with pytest.raises(ValueError, match="same token"):
        prompt_log_likelihoods(model, codes, torch.tensor([[BOS, 5], [EOS, 5]]))


def test_contrastive_reranking_subtracts_the_weighted_mean_likelihood_of_the_batch_prompts() -> None:
    model = tiny()
    text = torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, 0], [BOS, 5, 6, EOS]])  # two distinct prompts
    mask = text != 0
    out = generate_images(
        model, text, mask, num_candidates=3, generator=torch.Generator().manual_seed(0), contrast_weight=0.5
    )
    codes = out.codes.flatten(0, 1)
    own = prompt_log_likelihood(model, codes, text.repeat_interleave(3, 0), mask.repeat_interleave(3, 0))
    each = torch.stack(
        [prompt_log_likelihood(model, codes, text[p].expand(9, 4), mask[p].expand(9, 4)) for p in (0, 1)], 1
    )
    contrast = each.logsumexp(1) - torch.log(torch.tensor(2.0))  # the repeated prompt counts once
    torch.testing.assert_close(out.terms["log_likelihood"], own.view(3, 3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.terms["contrast"], contrast.view(3, 3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.scores, (own - 0.5 * contrast).view(3, 3), rtol=1e-5, atol=1e-5)
    assert torch.equal(out.best_index, out.scores.argmax(1))
    # the same draws as the likelihood reranking (the candidates do not depend on the scorer)
    plain = generate_images(model, text, mask, num_candidates=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain.codes, out.codes) and plain.terms == {}


def test_contrastive_terms_prefer_the_image_that_rules_the_other_prompt_out() -> None:
    """Train image→text on: the all-0 image is captioned "3" or "4" alike, the all-1 image "3" once and
    "5" twice. For prompt "3" the own likelihood prefers the all-0 image (1/2 against 1/3), the pointwise
    mutual information against the prompts {"3", "4"} the all-1 image, which rules "4" out."""
    grids = torch.tensor([0, 0, 1, 1, 1])[:, None].expand(5, 9).contiguous()
    captions = torch.tensor([[BOS, word, EOS] for word in (3, 4, 3, 5, 5)])
    model = trained_captioner(grids, captions, steps=150)
    candidates = grids[[0, 2, 0, 2]]  # the all-0 and the all-1 image for each prompt
    ids = torch.tensor([[BOS, 3, EOS], [BOS, 3, EOS], [BOS, 4, EOS], [BOS, 4, EOS]])
    own, contrast = contrastive_terms(model, candidates, ids)
    assert own[0] > own[1] + 0.2  # likelihood reranking would keep the all-0 image for "3"
    pmi = own - contrast
    assert pmi[1] > pmi[0] + 0.4  # the contrast keeps the all-1 image


def test_contrastive_reranking_refuses_a_negative_weight_and_another_scorer() -> None:
    model = tiny()
    text = torch.tensor([[BOS, 5, EOS]])
    with pytest.raises(ValueError, match="contrast_weight must be >= 0"):
        generate_images(model, text, num_candidates=2, contrast_weight=-1.0)
    with pytest.raises(ValueError, match="cannot go with a scorer"):
        generate_images(model, text, num_candidates=2, contrast_weight=1.0, scorer=lambda c, t, m: c[:, 0])


def test_image_log_likelihood_sums_every_code_slot_and_the_implicit_classifier_subtracts_the_null_prompt() -> (
    None
):
    model = tiny()
    codes = torch.randint(0, CODES, (2, 9), generator=torch.Generator().manual_seed(3))
    text = torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, 0]])
    mask = text != 0
    got = image_log_likelihood(model, codes, text, mask)
    log_probs = model.image_logits(model(text, mask, codes, "text_to_image").image_states).log_softmax(-1)
    expected = torch.stack([sum(log_probs[row, j, codes[row, j]] for j in range(9)) for row in range(2)])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    null_ids, null_mask = null_prompts(2, 4, BOS, EOS, 0)
    implicit = implicit_classifier_scores(model, codes, text, mask, null_ids, null_mask)
    torch.testing.assert_close(implicit, got - image_log_likelihood(model, codes, null_ids, null_mask))


def test_rerank_picks_the_candidate_the_prompt_is_most_likely_under() -> None:
    """Train image→text on "an all-k image is captioned with word 3 + k"; then the candidate grid
    matching a prompt must be the one reranking keeps."""
    grids = torch.arange(4)[:, None].expand(4, 9).contiguous()
    captions = torch.stack([torch.tensor([BOS, 3 + k, EOS]) for k in range(4)])
    model = trained_captioner(grids, captions, steps=60)
    candidates = grids[None].expand(2, 4, 9)  # every grid is a candidate for both prompts
    prompts = captions[[2, 1]]
    scores = prompt_log_likelihood(model, candidates.flatten(0, 1), prompts.repeat_interleave(4, 0)).view(
        2, 4
    )
    picked = rerank(candidates, scores)
    assert picked.best_index.tolist() == [2, 1]
    assert torch.equal(picked.best, grids[[2, 1]])


def test_generate_images_ranks_its_candidates_by_the_scorer() -> None:
    model = tiny()
    text = torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, 0]])
    mask = text != 0
    out = generate_images(model, text, mask, num_candidates=3, generator=torch.Generator().manual_seed(0))
    assert out.codes.shape == (2, 3, 9)
    expected = prompt_log_likelihood(
        model, out.codes.flatten(0, 1), text.repeat_interleave(3, 0), mask.repeat_interleave(3, 0)
    ).view(2, 3)
    torch.testing.assert_close(out.scores, expected)
    assert torch.equal(out.best_index, expected.argmax(1))
    # any scorer (an ITM head) can replace the likelihood: here the candidate with the most code-0 cells
    most_zeros = generate_images(
        model, text, mask, num_candidates=3, generator=torch.Generator().manual_seed(0),
        scorer=lambda codes, ids, m: (codes == 0).sum(1).float(),
    )  # fmt: skip
    assert torch.equal(most_zeros.best_index, (out.codes == 0).sum(2).argmax(1))


def test_a_memorised_pairing_is_generated_back_in_both_directions() -> None:
    """Train both directions on three (caption, image) pairs; near-greedy sampling must return each
    caption's image and greedy / beam captioning each image's caption (the slots training reads are the
    ones generation reads)."""
    model = tiny().train()
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, CODES, (3, 9), generator=g)
    captions = torch.tensor([[BOS, 4, 5, EOS], [BOS, 6, 7, EOS], [BOS, 8, 9, EOS]])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        t2i = model(captions, None, images, "text_to_image").image_states
        i2t = model(captions, None, images, "image_to_text").text_states[:, :-1]
        loss = torch.nn.functional.cross_entropy(model.image_logits(t2i).flatten(0, 1), images.flatten())
        loss = loss + torch.nn.functional.cross_entropy(
            model.text_logits(i2t).flatten(0, 1), captions[:, 1:].flatten()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    sampled = sample_image_codes(
        model, captions, temperature=0.05, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(sampled, images)
    for beams in (1, 2):
        out = caption_images(model, images, BOS, EOS, 0, max_len=6, num_beams=beams)
        assert torch.equal(out.sequences[:, :4], captions)


def test_guided_logits_move_away_from_the_null_prompt_by_the_scale() -> None:
    conditional = torch.tensor([[1.0, 3.0, -2.0]])
    unconditional = torch.tensor([[2.0, 1.0, -2.0]])
    logits = torch.cat([conditional, unconditional])
    assert guided_logits(logits, 1.0).tolist() == conditional.tolist()
    assert guided_logits(logits, 0.0).tolist() == unconditional.tolist()
    assert guided_logits(logits, 3.0).tolist() == [[-1.0, 7.0, -2.0]]  # u + 3 (c - u)


def test_null_prompts_are_cls_sep_then_padding() -> None:
    ids, mask = null_prompts(2, 5, BOS, EOS, 0)
    assert ids.tolist() == [[BOS, EOS, 0, 0, 0]] * 2
    assert mask.tolist() == [[True, True, False, False, False]] * 2
    with pytest.raises(ValueError, match="length >= 2"):
        null_prompts(1, 1, BOS, EOS, 0)


@pytest.mark.parametrize("patterns", [["dense"] * 4, None])
def test_guided_cached_sampling_equals_uncached_under_the_same_seed(patterns: list[str] | None) -> None:
    model = tiny(patterns)
    text = torch.tensor([[BOS, 5, 6, 7, EOS], [BOS, 8, EOS, 0, 0]])
    null_ids, null_mask = null_prompts(2, 5, BOS, EOS, 0)
    runs = [
        sample_image_codes(
            model, text, text != 0, temperature=1.5, top_k=6, generator=torch.Generator().manual_seed(3),
            use_cache=cached, guidance_scale=2.5, null_ids=null_ids, null_mask=null_mask,
        )
        for cached in (True, False)
    ]  # fmt: skip
    assert torch.equal(runs[0], runs[1])


def test_the_guidance_scale_sets_how_much_the_prompt_counts() -> None:
    """At scale 0 only the null prompt's logits are read (u + 0 (c - u) = u exactly), so two different prompts
    draw the same codes under one seed; at scale 4 they do not."""
    model = tiny()
    prompts = [torch.tensor([[BOS, 5, 6, 7, EOS]] * 6), torch.tensor([[BOS, 9, 10, 11, EOS]] * 6)]
    null_ids, null_mask = null_prompts(6, 5, BOS, EOS, 0)

    def draw(text: torch.Tensor, scale: float) -> torch.Tensor:
        return sample_image_codes(
            model, text, None, generator=torch.Generator().manual_seed(0),
            guidance_scale=scale, null_ids=null_ids, null_mask=null_mask,
        )  # fmt: skip

    assert torch.equal(draw(prompts[0], 0.0), draw(prompts[1], 0.0))
    assert not torch.equal(draw(prompts[0], 4.0), draw(prompts[1], 4.0))
    with pytest.raises(ValueError, match="needs null_ids of the prompts' shape"):
        sample_image_codes(model, prompts[0], guidance_scale=2.0)


def test_generate_images_guides_every_candidate() -> None:
    model = tiny()
    text = torch.tensor([[BOS, 5, 6, EOS], [BOS, 7, EOS, 0]])
    null_ids, null_mask = null_prompts(2, 4, BOS, EOS, 0)
    kwargs = {"temperature": 1.2, "guidance_scale": 2.0, "null_ids": null_ids, "null_mask": null_mask}
    sampled = generate_images(model, text, text != 0, 3, generator=torch.Generator().manual_seed(5), **kwargs)
    codes = sample_image_codes(
        model, text.repeat_interleave(3, 0), (text != 0).repeat_interleave(3, 0),
        generator=torch.Generator().manual_seed(5),
        **{**kwargs, "null_ids": null_ids.repeat_interleave(3, 0), "null_mask": null_mask.repeat_interleave(3, 0)},
    )  # fmt: skip
    assert torch.equal(sampled.codes, codes.view(2, 3, -1))
