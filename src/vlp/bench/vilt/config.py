"""What ``bench vilt`` measures: :class:`ViltBenchConfig`, the ``--smoke`` sizes and the names every
module of the benchmark shares (precisions, sides, the [MASK] id, the reference matmul's shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from vlp.tasks.compile import CompileConfig

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


class Variant(NamedTuple):
    """One measured model: its row name, its side, and whether its blocks are compiled."""

    name: str
    side: Side
    compiled: bool


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
        compile: also measure both models with every transformer block compiled in place
            (vlp's ``Block``, transformers' ``ViltLayer``; :mod:`vlp.tasks.compile`), as extra rows beside
            the eager ones; the compiled copies start from the same weights. No memory runs for them.
        compile_backend, compile_mode, compile_dynamic: how the blocks are compiled, the same on both
            sides (:class:`~vlp.tasks.compile.CompileConfig`); the batch has one shape, so static
            (``compile_dynamic: false``) by default.
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
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str | None = None
    compile_dynamic: bool | None = False
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
        if self.compile and self.warmup < 1:
            raise ValueError("compile needs warmup >= 1: a compiled model compiles in its first step")
        if self.compile:
            from vlp.tasks.compile import check_names

            check_names(self.compile_config, key="compile")

    @property
    def compile_config(self) -> CompileConfig:
        """How both sides' blocks are compiled with ``compile``."""
        from vlp.tasks.compile import CompileConfig

        return CompileConfig(self.compile_backend, self.compile_mode, self.compile_dynamic)

    @property
    def variants(self) -> list[Variant]:
        """The measured rows of a precision: each side eager, then each side compiled with ``compile``."""
        eager = [Variant(side, side, False) for side in SIDES]
        return eager + ([Variant(f"{side} compiled", side, True) for side in SIDES] if self.compile else [])

    @property
    def num_masked(self) -> int:
        """MLM labels per sample: ``mask_prob`` of the tokens, at least one, never the first."""
        return min(self.text_len - 1, max(1, round(self.mask_prob * self.text_len)))

    @property
    def tokens(self) -> int:
        """Sequence length through the encoder: text + image [CLS] + patches."""
        return self.text_len + 1 + (self.image_size // self.patch_size) ** 2
