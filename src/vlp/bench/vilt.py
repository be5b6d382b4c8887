"""``python -m vlp bench vilt``: vlp's ViLT against transformers' ViLT, the same training step, one run.

Both sides train the same step on the same batch: masked text (``mask_prob`` of the tokens carry an
MLM label, the same labels on both sides), ITM labels, the same images; MLM loss + ITM loss,
backward, an AdamW step (``torch.optim.AdamW``, one group, the same settings on both sides, fused
by default as transformers' ``Trainer`` uses it).

- **vlp**: :class:`~vlp.models.vilt.ViLT` with :class:`~vlp.objectives.MLMObjective` (the MLM head
  runs on the labelled positions only) and :class:`~vlp.objectives.ITMObjective`, as
  :class:`~vlp.tasks.PretrainTask` runs them: the last layer computes only the rows the two heads
  read (the labelled text rows and [CLS], ``ViLT(text_rows=...)``); below it every row is computed.
- **transformers**: ``ViltForMaskedLM``'s ``ViltModel`` and ``ViltMLMHead`` used as its ``forward``
  uses them (logits at every text position, ``CrossEntropyLoss`` over them), plus an ITM
  ``nn.Linear`` on the pooler output.

The configuration is identical: widths, depth, heads, MLP, patch size, every LayerNorm at
``eps=1e-12`` (``ViltConfig`` has one ``layer_norm_eps``), dropout 0 everywhere (``ViltConfig``'s
default), all ``(image_size / patch_size)**2`` patches (``max_image_length=-1``, no sampling), and
the MLM decoder tied to the word embeddings on both sides (``ViltConfig`` forces the tie; vlp's
recipes, like official ViLT, leave it untied). The transformers side is built first and its weights
are copied onto vlp's keys (q, k, v concatenated into ``qkv``), so both start from the same weights
and their first losses agree: the step-0 losses are printed.

Each precision starts again from those initial weights with a fresh optimiser, so the step-0
losses of the two precisions are comparable too. Timing: ``warmup`` untimed steps each, then
``steps`` timed steps each, interleaved (vlp, transformers, matmul; then transformers, vlp,
matmul; ...), medians reported. The matmul is a plain ``[768, 3072] @ [3072, 768]`` product in the
run's precision, timed in the same loop; each model's achieved FLOP/s (its own FLOPs per step,
counted once with ``FlopCounterMode``, forward + backward) is reported as a fraction of it. Inference latency: eval mode, ``no_grad``, batch 1, ITM score
(model + pooler + ITM linear), interleaved, median. Precisions: ``fp32`` and ``bf16`` (the same
step under ``torch.autocast("cpu", dtype=torch.bfloat16)``, weights and optimiser in fp32).

Peak memory: each (model, precision) trains ``memory_steps`` steps in a fresh subprocess
(``python -m vlp.bench.vilt --memory_worker ...``) that imports the same modules whatever it builds.
Reported are the process's peak resident set (``VmHWM``) and the step's part of it: the peak over
the steps (the high-water mark reset via ``/proc/self/clear_refs`` after the model is built) minus
the resident set before the first step, i.e. activations, gradients and AdamW state. Python's
``tracemalloc`` does not see torch's allocator, resident memory does.

The last line printed is ``ratio: R``, the lower over the precisions of vlp samples/s divided by
transformers samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlp.allocator import ENV_VAR, configure_from_env, is_active
from vlp.bench.scaling import cpu_name
from vlp.tasks.optim import ADAMW_IMPLEMENTATIONS

Precision = Literal["fp32", "bf16"]
Side = Literal["vlp", "transformers"]
AdamWImpl = Literal["fused", "foreach", "for-loop"]
SIDES: tuple[Side, ...] = ("vlp", "transformers")
MASK_ID = 4  # a stand-in [MASK] id; ids below 5 are never drawn as text
MATMUL_SHAPE = (768, 3072, 768)  # [M, K] @ [K, N]: an MLP projection's shape at ViLT-B width
SMOKE: dict[str, Any] = {
    "batch_size": 2,
    "image_size": 32,
    "patch_size": 16,
    "text_len": 8,
    "dim": 32,
    "depth": 2,
    "num_heads": 4,
    "vocab_size": 100,
    "steps": 2,
    "warmup": 1,
    "infer_steps": 2,
    "matmul_repeats": 1,
    "memory": False,
    "threads": 1,  # tiny ops: a second thread only adds OpenMP barriers
}


@dataclass
class ViltBenchConfig:
    """What to measure. The defaults are ViLT-B/32 at 384 px (configs/vilt/vilt_b32.yaml's sizes).

    Args:
        batch_size: samples per training step.
        image_size: side of the square images; all ``(image_size // patch_size)**2`` patches are kept.
        text_len: text tokens per sample, all real (no padding).
        mask_prob: share of the text tokens (never the first) that carry an MLM label.
        steps: timed training steps per model and precision.
        warmup: untimed training steps per model and precision before them.
        infer_steps: timed batch-1 inference passes per model and precision (after 2 untimed).
        matmul_repeats: matmuls per timed matmul burst (one burst per timed step pair).
        precisions: ``fp32`` and/or ``bf16`` (bf16 autocast).
        threads: torch threads (``torch.set_num_threads``), also in the memory subprocesses.
        memory: measure peak memory in one subprocess per model and precision.
        memory_steps: training steps each memory subprocess runs (the first allocates AdamW state).
        adamw: ``torch.optim.AdamW`` implementation, the same on both sides: ``fused`` (the
            default of transformers' ``Trainer`` with torch >= 2.8, and torch's fastest on CPU),
            ``foreach`` or ``for-loop`` (torch's own default for CPU tensors).
    """

    batch_size: int = 8
    image_size: int = 384
    patch_size: int = 32
    text_len: int = 40
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    vocab_size: int = 30522
    mask_prob: float = 0.15
    steps: int = 10
    warmup: int = 2
    infer_steps: int = 10
    matmul_repeats: int = 8
    precisions: list[Precision] = field(default_factory=lambda: ["fp32", "bf16"])
    threads: int = 2
    memory: bool = True
    memory_steps: int = 2
    adamw: AdamWImpl = "fused"
    lr: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("batch_size", "image_size", "patch_size", "dim", "depth", "num_heads", "steps")
        positive += ("infer_steps", "matmul_repeats", "threads", "memory_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.text_len < 2:
            raise ValueError(f"text_len must be >= 2 (a [CLS] and a maskable token), got {self.text_len}")
        if self.vocab_size <= MASK_ID + 1:
            raise ValueError(f"vocab_size must be > {MASK_ID + 1} (ids up to {MASK_ID} are special)")
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.adamw not in ("fused", "foreach", "for-loop"):
            raise ValueError(f"adamw must be fused, foreach or for-loop, got {self.adamw!r}")
        if not self.precisions or set(self.precisions) - {"fp32", "bf16"}:
            raise ValueError(f"precisions must be a non-empty list of fp32 / bf16, got {self.precisions}")

    @property
    def num_masked(self) -> int:
        """MLM labels per sample: ``mask_prob`` of the tokens, at least one, never the first."""
        return min(self.text_len - 1, max(1, round(self.mask_prob * self.text_len)))

    @property
    def tokens(self) -> int:
        """Sequence length through the encoder: text + image [CLS] + patches."""
        return self.text_len + 1 + (self.image_size // self.patch_size) ** 2


@dataclass
class BenchBatch:
    """One training batch, in the form each side takes it (built once, outside every timing)."""

    pixels: Tensor  # [B, 3, H, W]
    text_ids: Tensor  # [B, L] with MASK_ID at the labelled positions
    text_mask: Tensor  # [B, L] bool, all True
    mlm_labels: Tensor  # [B, L], -100 where unlabelled
    itm_labels: Tensor  # [B]

    def head(self, size: int) -> BenchBatch:
        """The first ``size`` samples."""
        return BenchBatch(*(getattr(self, f.name)[:size] for f in fields(self)))

    def for_vlp(self) -> Any:
        from vlp.batch import Batch

        size = self.text_ids.shape[0]
        return Batch(
            keys=[str(i) for i in range(size)],
            pixels=self.pixels,
            pixel_mask=torch.ones(size, *self.pixels.shape[2:], dtype=torch.bool),
            text_mask=self.text_mask,
            mlm_text_ids=self.text_ids,
            mlm_labels=self.mlm_labels,
            itm_labels=self.itm_labels,
        )

    def for_transformers(self) -> dict[str, Tensor]:
        """The integer masks transformers' ``ViltProcessor`` produces."""
        size = self.text_ids.shape[0]
        return {
            "input_ids": self.text_ids,
            "attention_mask": self.text_mask.long(),
            "pixel_values": self.pixels,
            "pixel_mask": torch.ones(size, *self.pixels.shape[2:], dtype=torch.long),
        }


def make_batch(config: ViltBenchConfig, size: int, seed: int) -> BenchBatch:
    """Random images and ids; ``num_masked`` positions per sample replaced by [MASK] and labelled."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(MASK_ID + 1, config.vocab_size, (size, config.text_len), generator=generator)
    order = torch.rand(size, config.text_len - 1, generator=generator).argsort(1)
    positions = order[:, : config.num_masked] + 1  # never the first ([CLS]) token
    labels = torch.full_like(ids, -100).scatter(1, positions, ids.gather(1, positions))
    side = config.image_size
    return BenchBatch(
        pixels=torch.randn(size, 3, side, side, generator=generator),
        text_ids=ids.scatter(1, positions, MASK_ID),
        text_mask=torch.ones(size, config.text_len, dtype=torch.bool),
        mlm_labels=labels,
        itm_labels=torch.randint(0, 2, (size,), generator=generator),
    )


class VlpSide(nn.Module):
    """vlp's ViLT with its MLM and ITM objectives; the MLM decoder tied to the word embeddings."""

    def __init__(self, config: ViltBenchConfig) -> None:
        super().__init__()
        from vlp.models.embedders.text import TextEmbedder
        from vlp.models.embedders.vit_patch import ViTPatchEmbedder
        from vlp.models.layers.heads import ITMHead, MLMHead
        from vlp.models.layers.transformer import TransformerEncoder
        from vlp.models.vilt import ViLT
        from vlp.objectives import ITMObjective, MLMObjective

        self.model = ViLT(
            TextEmbedder(vocab_size=config.vocab_size, dim=config.dim, max_len=config.text_len),
            ViTPatchEmbedder(
                dim=config.dim,
                patch_size=config.patch_size,
                pos_grid=config.image_size // config.patch_size,
                max_image_len=-1,
            ),
            TransformerEncoder(
                dim=config.dim,
                depth=config.depth,
                num_heads=config.num_heads,
                mlp_ratio=config.mlp_ratio,
                norm_eps=1e-12,
            ),
        )
        self.mlm = MLMObjective(MLMHead(config.dim, vocab_size=config.vocab_size))
        self.itm = ITMObjective(ITMHead(config.dim))
        self.mlm.head.decoder.weight = self.model.text_embedder.word_embeddings.weight

    def losses(self, batch: Any) -> tuple[Tensor, Tensor]:
        """(MLM loss, ITM loss) of one pass over ``batch``, a :class:`~vlp.batch.Batch`."""
        outputs = self.model(
            batch.mlm_text_ids,
            batch.text_mask,
            batch.pixels,
            batch.pixel_mask,
            text_rows=batch.mlm_labels != -100,
        )
        return self.mlm(outputs, batch).loss, self.itm(outputs, batch).loss

    def itm_logits(self, batch: Any) -> Tensor:
        outputs = self.model(batch.mlm_text_ids, batch.text_mask, batch.pixels, batch.pixel_mask)
        return self.itm.head(outputs.pooled)


class TransformersSide(nn.Module):
    """transformers' ``ViltForMaskedLM`` (its ``ViltModel`` + ``ViltMLMHead``) and an ITM linear."""

    def __init__(self, config: ViltBenchConfig) -> None:
        super().__init__()
        from transformers import ViltConfig, ViltForMaskedLM

        torch.manual_seed(config.seed)
        self.config = ViltConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.dim,
            num_hidden_layers=config.depth,
            num_attention_heads=config.num_heads,
            intermediate_size=int(config.dim * config.mlp_ratio),
            hidden_act="gelu",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            layer_norm_eps=1e-12,
            image_size=config.image_size,
            patch_size=config.patch_size,
            max_position_embeddings=config.text_len,
            max_image_length=-1,
            pad_token_id=0,
        )
        self.mlm_model = ViltForMaskedLM(self.config)
        self.itm_score = nn.Linear(config.dim, 2)
        nn.init.normal_(self.itm_score.weight, std=self.config.initializer_range)
        nn.init.zeros_(self.itm_score.bias)

    def losses(
        self, inputs: dict[str, Tensor], mlm_labels: Tensor, itm_labels: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(MLM loss, ITM loss), computed as ``ViltForMaskedLM.forward`` computes its MLM loss."""
        outputs = self.mlm_model.vilt(**inputs)
        text_len = inputs["input_ids"].shape[1]
        mlm_logits = self.mlm_model.mlm_score(outputs.last_hidden_state[:, :text_len])
        mlm_loss = F.cross_entropy(mlm_logits.view(-1, self.config.vocab_size), mlm_labels.view(-1))
        itm_loss = F.cross_entropy(self.itm_score(outputs.pooler_output), itm_labels)
        return mlm_loss, itm_loss

    def itm_logits(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.itm_score(self.mlm_model.vilt(**inputs).pooler_output)


def transformers_to_vlp(hf: TransformersSide, depth: int) -> dict[str, Tensor]:
    """The transformers side's weights under vlp's keys: every vlp key, q/k/v concatenated into qkv."""
    source = hf.state_dict()
    vilt = "mlm_model.vilt."
    target: dict[str, Tensor] = {}

    def copy(vlp_key: str, hf_key: str) -> None:
        target[vlp_key] = source[hf_key]

    for suffix in ("weight", "bias"):
        copy(f"model.text_embedder.norm.{suffix}", f"{vilt}embeddings.text_embeddings.LayerNorm.{suffix}")
        copy(
            f"model.visual_embedder.patch_embed.proj.{suffix}",
            f"{vilt}embeddings.patch_embeddings.projection.{suffix}",
        )
        copy(f"model.encoder.norm.{suffix}", f"{vilt}layernorm.{suffix}")
        copy(f"model.pooler.dense.{suffix}", f"{vilt}pooler.dense.{suffix}")
        copy(f"mlm.head.dense.{suffix}", f"mlm_model.mlm_score.transform.dense.{suffix}")
        copy(f"mlm.head.norm.{suffix}", f"mlm_model.mlm_score.transform.LayerNorm.{suffix}")
        copy(f"itm.head.fc.{suffix}", f"itm_score.{suffix}")
        for i in range(depth):
            ours, theirs = f"model.encoder.blocks.{i}.", f"{vilt}encoder.layer.{i}."
            copy(f"{ours}norm1.{suffix}", f"{theirs}layernorm_before.{suffix}")
            copy(f"{ours}norm2.{suffix}", f"{theirs}layernorm_after.{suffix}")
            copy(f"{ours}attn.proj.{suffix}", f"{theirs}attention.output.dense.{suffix}")
            copy(f"{ours}mlp.fc1.{suffix}", f"{theirs}intermediate.dense.{suffix}")
            copy(f"{ours}mlp.fc2.{suffix}", f"{theirs}output.dense.{suffix}")
            target[f"{ours}attn.qkv.{suffix}"] = torch.cat(
                [source[f"{theirs}attention.attention.{name}.{suffix}"] for name in ("query", "key", "value")]
            )
    for name in ("word", "position", "token_type"):
        copy(
            f"model.text_embedder.{name}_embeddings.weight",
            f"{vilt}embeddings.text_embeddings.{name}_embeddings.weight",
        )
    copy("model.visual_embedder.cls_token", f"{vilt}embeddings.cls_token")
    copy("model.visual_embedder.pos_embed", f"{vilt}embeddings.position_embeddings")
    copy("model.token_type_embeddings.weight", f"{vilt}embeddings.token_type_embeddings.weight")
    copy("mlm.head.decoder.weight", "mlm_model.mlm_score.decoder.weight")
    copy("mlm.head.bias", "mlm_model.mlm_score.decoder.bias")
    return target


def build_sides(config: ViltBenchConfig) -> tuple[VlpSide, TransformersSide]:
    """Both models, vlp's loaded (strictly, every key) with the transformers side's initial weights."""
    hf = TransformersSide(config)
    vlp = VlpSide(config)
    vlp.load_state_dict(transformers_to_vlp(hf, config.depth), strict=True)
    return vlp, hf


def make_optimizer(module: nn.Module, config: ViltBenchConfig) -> torch.optim.Optimizer:
    """The same AdamW on both sides, one group, in the implementation ``config.adamw`` names."""
    return torch.optim.AdamW(
        module.parameters(),
        lr=config.lr,
        betas=(0.9, 0.98),
        weight_decay=0.01,
        **ADAMW_IMPLEMENTATIONS[config.adamw],
    )


def autocast(precision: Precision) -> Any:
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


class StepRunner:
    """One side's training step and batch-1 inference pass, with its inputs prepared once."""

    def __init__(self, side: Side, module: nn.Module, config: ViltBenchConfig, batch: BenchBatch) -> None:
        self.side, self.module, self.config = side, module, config
        self.optimizer = make_optimizer(module, config)
        single = batch.head(1)
        if side == "vlp":
            vlp_batch, vlp_single = batch.for_vlp(), single.for_vlp()
            self._losses = lambda: module.losses(vlp_batch)
            self._infer = lambda: module.itm_logits(vlp_single)
        else:
            inputs, single_inputs = batch.for_transformers(), single.for_transformers()
            self._losses = lambda: module.losses(inputs, batch.mlm_labels, batch.itm_labels)
            self._infer = lambda: module.itm_logits(single_inputs)

    def restart(self, state: dict[str, Tensor]) -> None:
        """Back to the weights ``state`` with a fresh optimiser: each precision starts at step 0."""
        self.module.load_state_dict(state, strict=True)
        self.optimizer = make_optimizer(self.module, self.config)

    def losses(self, precision: Precision) -> tuple[Tensor, Tensor]:
        with autocast(precision):
            return self._losses()

    def step(self, precision: Precision) -> tuple[Tensor, Tensor]:
        """Forward, backward, AdamW step; returns the (MLM, ITM) losses, detached."""
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        mlm, itm = self.losses(precision)
        (mlm + itm).backward()
        self.optimizer.step()
        return mlm.detach(), itm.detach()

    def infer(self, precision: Precision) -> Tensor:
        self.module.eval()
        with torch.no_grad(), autocast(precision):
            return self._infer()


def sdpa_cpu_flop_mapping() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for the CPU flash-attention ops, which ``FlopCounterMode`` does not list yet."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(
        grad: Any, query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return sdpa_backward_flop_count(grad, query, key, value)

    return {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def count_step_flops(runner: StepRunner) -> int:
    """FLOPs of one forward + backward (fp32; matmul-like ops, as ``FlopCounterMode`` counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    runner.module.train()
    counter = FlopCounterMode(display=False, custom_mapping=sdpa_cpu_flop_mapping())
    with counter:
        mlm, itm = runner.losses("fp32")
        (mlm + itm).backward()
    runner.module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class Matmul:
    """A plain ``[M, K] @ [K, N]`` product in the run's precision: the machine's attainable FLOP/s."""

    def __init__(self, repeats: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        m, k, n = MATMUL_SHAPE
        self.repeats = repeats
        self.flops = 2 * m * k * n * repeats
        self.operands = {
            dtype: (
                torch.randn(m, k, generator=generator).to(dtype),
                torch.randn(k, n, generator=generator).to(dtype),
            )
            for dtype in (torch.float32, torch.bfloat16)
        }

    def run(self, precision: Precision) -> float:
        """Seconds for ``repeats`` products."""
        a, b = self.operands[torch.bfloat16 if precision == "bf16" else torch.float32]
        start = time.perf_counter()
        for _ in range(self.repeats):
            torch.mm(a, b)
        return time.perf_counter() - start


def timed(fn: Callable[[Precision], Any], precision: Precision) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(precision)
    return time.perf_counter() - start, result


def measure_precision(
    precision: Precision, runners: dict[Side, StepRunner], matmul: Matmul, config: ViltBenchConfig
) -> dict[str, Any]:
    """Interleaved training steps, matmul bursts and inference passes of both sides in ``precision``."""
    losses: dict[Side, list[tuple[float, float]]] = {side: [] for side in SIDES}
    for _ in range(config.warmup):
        for side in SIDES:
            mlm, itm = runners[side].step(precision)
            losses[side].append((float(mlm), float(itm)))
    matmul.run(precision)
    step_s: dict[Side, list[float]] = {side: [] for side in SIDES}
    matmul_s: list[float] = []
    for i in range(config.steps):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            seconds, (mlm, itm) = timed(runners[side].step, precision)
            step_s[side].append(seconds)
            losses[side].append((float(mlm), float(itm)))
        matmul_s.append(matmul.run(precision))
    for _ in range(2):
        for side in SIDES:
            runners[side].infer(precision)
    infer_s: dict[Side, list[float]] = {side: [] for side in SIDES}
    for i in range(config.infer_steps):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            infer_s[side].append(timed(runners[side].infer, precision)[0])
    matmul_flops = matmul.flops / statistics.median(matmul_s)
    return {
        "precision": precision,
        "matmul_flop_per_s": matmul_flops,
        "sides": {
            side: {
                "step_s": statistics.median(step_s[side]),
                "samples_per_s": config.batch_size / statistics.median(step_s[side]),
                "all_step_s": step_s[side],
                "infer_ms": 1000 * statistics.median(infer_s[side]),
                "losses": losses[side],  # warm-up steps first: [0] is step 0
            }
            for side in SIDES
        },
    }


def read_status_kib(key: str) -> float | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``, ``VmHWM``), ``None`` off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_worker(side: Side, precision: Precision, config: ViltBenchConfig) -> dict[str, float]:
    """Build one side, train ``memory_steps`` steps, return peak RSS (MiB) and the steps' share of it."""
    torch.set_num_threads(config.threads)
    # The same imports whichever side is built, so that they weigh the same in the peak.
    from transformers import ViltForMaskedLM  # noqa: F401

    import vlp.models.vilt
    import vlp.objectives  # noqa: F401

    torch.manual_seed(config.seed)
    module: nn.Module = VlpSide(config) if side == "vlp" else TransformersSide(config)
    runner = StepRunner(side, module, config, make_batch(config, config.batch_size, config.seed + 1))
    before = read_status_kib("VmRSS")
    exact = reset_peak_rss()
    for _ in range(config.memory_steps):
        runner.step(precision)
    peak = read_status_kib("VmHWM") if exact else None
    if peak is None:  # ru_maxrss: the process's peak since it started, construction included
        peak = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return {
        "peak_rss_mib": peak / 1024,
        "step_mib": (peak - before) / 1024 if before is not None and exact else float("nan"),
    }


def run_memory(side: Side, precision: Precision, config: ViltBenchConfig, timeout: float) -> dict[str, float]:
    """:func:`memory_worker` in a fresh ``python -m vlp.bench.vilt --memory_worker`` process."""
    # the same malloc settings as this process (vlp.allocator), whatever the environment says
    env = {**os.environ, "OMP_NUM_THREADS": str(config.threads), ENV_VAR: "1" if is_active() else "0"}
    command = [
        sys.executable, "-m", "vlp.bench.vilt", "--memory_worker", side, "--precision", precision,
        "--config_json", json.dumps(asdict(config)),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(
            f"bench vilt: memory run of {side} {precision} took longer than {timeout} s"
        ) from None
    if done.returncode != 0:
        raise RuntimeError(f"bench vilt: memory run of {side} {precision} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(
    config: ViltBenchConfig, timeout: float = 1800.0, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every measurement of the benchmark; the report is :func:`markdown` of this."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _run(config, timeout, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(config: ViltBenchConfig, timeout: float, log: Callable[[str], None]) -> dict[str, Any]:
    vlp, hf = build_sides(config)
    batch = make_batch(config, config.batch_size, config.seed + 1)
    runners: dict[Side, StepRunner] = {
        "vlp": StepRunner("vlp", vlp, config, batch),
        "transformers": StepRunner("transformers", hf, config, batch),
    }
    flops = {side: count_step_flops(runners[side]) for side in SIDES}
    parameters = {side: sum(p.numel() for p in module.parameters()) for side, module in zip(SIDES, (vlp, hf))}
    matmul = Matmul(config.matmul_repeats, config.seed)
    initial = {side: {k: v.clone() for k, v in runners[side].module.state_dict().items()} for side in SIDES}
    results = []
    for precision in config.precisions:
        for side in SIDES:
            runners[side].restart(initial[side])
        log(f"{precision}: {config.warmup} warm-up + {config.steps} timed steps per model ...")
        result = measure_precision(precision, runners, matmul, config)
        for side in SIDES:
            record = result["sides"][side]
            record["flops"] = flops[side]
            record["flop_per_s"] = flops[side] / record["step_s"]
            record["of_matmul"] = record["flop_per_s"] / result["matmul_flop_per_s"]
        results.append(result)
    memory: dict[str, dict[str, float]] = {}
    if config.memory:
        for precision in config.precisions:
            for side in SIDES:
                log(f"{precision}: peak memory of {side} (subprocess) ...")
                memory[f"{side}/{precision}"] = run_memory(side, precision, config, timeout)
    return {
        "results": results,
        "memory": memory,
        "parameters": parameters,
        "threads": torch.get_num_threads(),
        "device": cpu_name(),
        "keep_freed_memory": is_active(),
    }


def ratios(report: dict[str, Any]) -> dict[str, float]:
    """vlp samples/s over transformers samples/s, per precision."""
    return {
        r["precision"]: r["sides"]["vlp"]["samples_per_s"] / r["sides"]["transformers"]["samples_per_s"]
        for r in report["results"]
    }


def markdown(config: ViltBenchConfig, report: dict[str, Any], command: str) -> str:
    """A section for benchmarks/RESULTS.md: the command, the set-up, one row per model and precision."""
    import transformers

    params = {side: report["parameters"][side] / 1e6 for side in SIDES}
    mlp = int(config.dim * config.mlp_ratio)
    setup = (
        f"ViLT width {config.dim}, {config.depth} layers, {config.num_heads} heads, MLP {mlp}, "
        f"patch {config.patch_size}, {config.image_size} px, {config.tokens} tokens ({config.text_len} text, "
        f"{config.num_masked} MLM labels/sample), vocab {config.vocab_size}, MLM decoder tied; "
        f"batch {config.batch_size}; MLM + ITM, AdamW ({config.adamw}); dropout 0; "
        f"{params['vlp']:.1f} M (vlp) / {params['transformers']:.1f} M (transformers) parameters; "
        f"{config.steps} timed steps each after {config.warmup} warm-up, interleaved, medians; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"torch threads {report['threads']}, {report['device']}; glibc malloc "
        + (
            "keeps freed memory (vlp.allocator, both models: one process)."
            if report.get("keep_freed_memory")
            else "with its default settings (VLP_KEEP_FREED_MEMORY unset or 0)."
        )
    )
    lines = [
        f"`{command}`",
        "",
        setup,
        "",
        "| precision | model | samples/s | step (ms) | vs transformers | GFLOP/step | achieved GFLOP/s "
        "| of matmul | inference (ms/pair) | peak RSS (MiB) | step's share (MiB) "
        "| step-0 losses (MLM, ITM) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        precision = result["precision"]
        base = result["sides"]["transformers"]["samples_per_s"]
        for side in SIDES:
            r = result["sides"][side]
            mem = report["memory"].get(f"{side}/{precision}")
            peak = f"{mem['peak_rss_mib']:.0f}" if mem else "-"
            share = f"{mem['step_mib']:.0f}" if mem else "-"
            mlm, itm = r["losses"][0]
            lines.append(
                f"| {precision} | {side} | {r['samples_per_s']:.3f} | {1000 * r['step_s']:.0f} | "
                f"{r['samples_per_s'] / base:.2f}x | {r['flops'] / 1e9:.4g} | {r['flop_per_s'] / 1e9:.4g} | "
                f"{r['of_matmul']:.2f} | {r['infer_ms']:.1f} | {peak} | {share} | {mlm:.4f}, {itm:.4f} |"
            )
    lines.append("")
    m, k, n = MATMUL_SHAPE
    for result in report["results"]:
        steps = "; ".join(
            f"{side} " + ", ".join(f"{1000 * t:.0f}" for t in result["sides"][side]["all_step_s"])
            for side in SIDES
        )
        lines.append(
            f"- {result['precision']}: matmul [{m}x{k}] @ [{k}x{n}] "
            f"{result['matmul_flop_per_s'] / 1e9:.1f} GFLOP/s (median); every timed step (ms): {steps}"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    """Parse ``python -m vlp bench vilt`` options, measure, print the table and ``ratio: R`` last."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m vlp bench vilt", description=__doc__)
    parser.add_class_arguments(ViltBenchConfig, as_group=False)
    parser.add_argument(
        "--smoke", type=bool, default=False, help="tiny sizes, 2 steps, no memory runs (tests)"
    )
    parser.add_argument("--out", type=str | None, default=None, help="also write the markdown section here")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per memory subprocess")
    args = parser.parse_args(argv)
    values = args.as_dict()
    config = ViltBenchConfig(**{f.name: values[f.name] for f in fields(ViltBenchConfig)})
    if args.smoke:
        config = replace(config, **SMOKE)
    report = run(config, args.timeout, log=lambda text: print(text, flush=True))
    section = markdown(config, report, shlex.join(["python", "-m", "vlp", "bench", "vilt", *argv]))
    if args.out:
        Path(args.out).write_text(section)
    by_precision = ratios(report)
    print(section)
    print(", ".join(f"{precision} ratio: {value:.3f}" for precision, value in by_precision.items()))
    print(f"ratio: {min(by_precision.values()):.3f}")


def worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m vlp.bench.vilt")
    parser.add_argument("--memory_worker", choices=SIDES, required=True)
    parser.add_argument("--precision", choices=["fp32", "bf16"], required=True)
    parser.add_argument("--config_json", required=True)
    args = parser.parse_args(argv)
    config = ViltBenchConfig(**json.loads(args.config_json))
    configure_from_env()
    print(json.dumps(memory_worker(args.memory_worker, args.precision, config)))


if __name__ == "__main__":
    worker_main(sys.argv[1:])
