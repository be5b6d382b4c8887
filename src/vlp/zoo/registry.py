"""The model zoo's list: every published checkpoint vlp can load, by name (``family:tag``).

An :class:`Entry` says where the file is (sources tried in order: a local file, the mirror folder
``VLP_ZOO_DIR``, a Hugging Face repo file at a revision, a URL), how to check it (sha256: the
publisher's where one is given, otherwise pinned in the local lock on the first verified fetch and
enforced after, see :mod:`vlp.zoo.fetch`), where its state dict sits in the file, which converter
turns it into vlp's layout and which source keys that converter is expected to drop, the preprocessing
the weights were trained with, the licence, and the paper figure they reproduce.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from vlp.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class HubFile:
    """One file of a Hugging Face repo at a fixed revision (a commit hash pins it; a branch does not)."""

    repo_id: str
    filename: str
    revision: str = "main"


@dataclass(frozen=True)
class Preprocessing:
    """What the weights expect: square image side (pixels), per-channel mean/std after scaling to
    [0, 1], and the tokenizer (a Hugging Face name; vlp ships the BERT uncased WordPiece one)."""

    resolution: int
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    tokenizer: str | None = None


@dataclass(frozen=True)
class Entry:
    """A published checkpoint.

    Attributes:
        name: ``family:tag``.
        filename: the file's name in the mirror folder and the cache.
        converter: a key of :data:`vlp.zoo.convert.CONVERTERS`.
        hub: the Hugging Face file, when the publisher put it on the Hub.
        url: a direct download address.
        sha256: the file's sha256 where it is known in advance (published, or the Hub's LFS hash).
        sha256_prefix: the leading hex digits of the sha256 that the publisher put in the file name
            (torch.hub's convention: ``detr-r50-e632da11.pth``); checked, and the full hash pinned.
        container_key: where the state dict sits in the loaded file (``state_dict`` for Lightning
            checkpoints, ``model`` for DETR's); ``None``: the file is the state dict.
        expected_dropped: fnmatch patterns of the source keys the converter drops (a loss's
            discriminator, a head vlp builds itself); any other drop, or a pattern that matches nothing,
            fails the load.
        preprocessing: resolution, normalisation and tokenizer the weights were trained with.
        params: the parameter count, as the publisher states it.
        license: the weights' licence.
        figure: the paper figure the weights reproduce.
    """

    name: str
    filename: str
    converter: str
    preprocessing: Preprocessing
    params: str
    license: str
    figure: str
    hub: HubFile | None = None
    url: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    container_key: str | None = None
    expected_dropped: tuple[str, ...] = field(default_factory=tuple)

    @property
    def family(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.name.split(":", 1)[1]

    def source_names(self) -> list[str]:
        """The remote sources, for listings: ``hf:<repo>/<file>@<rev>`` and the URL."""
        out = []
        if self.hub is not None:
            out.append(f"hf:{self.hub.repo_id}/{self.hub.filename}@{self.hub.revision}")
        if self.url is not None:
            out.append(self.url)
        return out


VILT_PRE = Preprocessing(384, HALF, HALF, "bert-base-uncased")
VILT_RELEASE = "https://github.com/dandelin/ViLT/releases/download/200k/"
# Official ViLT checkpoints: a Lightning .ckpt whose state_dict holds the model and every head trained.
_OFFICIAL_VILT = {
    "b32-mlm-itm": ("vilt_200k_mlm_itm.ckpt", "ViLT-B/32 200k pre-training (MLM + ITM): Table 2-5 start"),
    "b32-vqa": ("vilt_vqa.ckpt", "VQAv2 test-dev 71.26 (Table 2)"),
    "b32-nlvr2": ("vilt_nlvr2.ckpt", "NLVR2 dev 75.70 / test-P 76.13 (Table 2)"),
    "b32-irtr-coco": ("vilt_irtr_coco.ckpt", "COCO 5k fine-tuned retrieval TR@1 61.5 / IR@1 42.7 (Table 3)"),
    "b32-irtr-f30k": (
        "vilt_irtr_f30k.ckpt",
        "Flickr30k 1k fine-tuned retrieval TR@1 83.5 / IR@1 64.4 (Table 3)",
    ),
}
# Hugging Face ports of the same weights (transformers' ViltFor* classes).
_HF_VILT = {
    "hf-b32-mlm": ("dandelin/vilt-b32-mlm", "ViLT-B/32 200k pre-training, MLM head only"),
    "hf-b32-mlm-itm": ("dandelin/vilt-b32-mlm-itm", "ViLT-B/32 200k pre-training (MLM + ITM)"),
    "hf-b32-vqa": ("dandelin/vilt-b32-finetuned-vqa", "VQAv2 test-dev 71.26 (Table 2)"),
    "hf-b32-nlvr2": ("dandelin/vilt-b32-finetuned-nlvr2", "NLVR2 test-P 76.13 (Table 2)"),
    "hf-b32-coco": ("dandelin/vilt-b32-finetuned-coco", "COCO 5k retrieval (Table 3)"),
    "hf-b32-flickr30k": ("dandelin/vilt-b32-finetuned-flickr30k", "Flickr30k 1k retrieval (Table 3)"),
}
# taming-transformers' first stages: Lightning checkpoints with the loss (LPIPS + discriminator) inside;
# the parameter counts are the autoencoder's (what vlp loads).
TAMING_DROPPED = ("loss.*",)
_TAMING = {
    "imagenet-f16-1024": (
        "vqgan_imagenet_f16_1024.ckpt",
        "https://heibox.uni-heidelberg.de/d/8088892a516d4e3baf92/files/?p=%2Fckpts%2Flast.ckpt&dl=1",
        "vqgan-taming",
        "72.1M",
        "ImageNet f=16, 1024 codes: FID 7.94 on ImageNet val reconstructions (taming-transformers README)",
    ),
    "imagenet-f16-16384": (
        "vqgan_imagenet_f16_16384.ckpt",
        "https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/?p=%2Fckpts%2Flast.ckpt&dl=1",
        "vqgan-taming",
        "76.1M",
        "ImageNet f=16, 16384 codes: FID 4.98 on ImageNet val reconstructions (taming-transformers README)",
    ),
    "openimages-f8-8192-gumbel": (
        "vqgan_gumbel_f8_8192.ckpt",
        "https://heibox.uni-heidelberg.de/d/2e5662443a6b4307b470/files/?p=%2Fckpts%2Flast.ckpt&dl=1",
        "vqgan-taming-gumbel",
        "69.0M",
        "OpenImages f=8, 8192 codes (Gumbel quantizer): FID 1.49 on ImageNet val reconstructions",
    ),
}
DETR_RELEASE = "https://dl.fbaipublicfiles.com/detr/"


def _entries() -> list[Entry]:
    out = [
        Entry(
            name=f"vilt:{tag}",
            filename=filename,
            converter="vilt-official",
            preprocessing=VILT_PRE,
            params="87.4M",
            license="Apache-2.0",
            figure=figure,
            url=VILT_RELEASE + filename,
            container_key="state_dict",
        )
        for tag, (filename, figure) in _OFFICIAL_VILT.items()
    ]
    out += [
        Entry(
            name=f"vilt:{tag}",
            filename=f"{repo.split('/')[1]}.safetensors",
            converter="vilt-hf",
            preprocessing=VILT_PRE,
            params="87.4M",
            license="Apache-2.0",
            figure=figure,
            hub=HubFile(repo, "model.safetensors"),
        )
        for tag, (repo, figure) in _HF_VILT.items()
    ]
    out += [
        Entry(
            name=f"vqgan:{tag}",
            filename=filename,
            converter=converter,
            preprocessing=Preprocessing(256, HALF, HALF),
            params=params,
            license="MIT",
            figure=figure,
            url=url,
            container_key="state_dict",
            expected_dropped=TAMING_DROPPED,
        )
        for tag, (filename, url, converter, params, figure) in _TAMING.items()
    ]
    for depth, prefix, box_ap in (("50", "e632da11", "42.0"), ("101", "2c7b67e5", "43.5")):
        common = dict(
            preprocessing=Preprocessing(800, IMAGENET_MEAN, IMAGENET_STD),
            params="41.3M" if depth == "50" else "60.2M",
            license="Apache-2.0",
            figure=f"COCO val2017 box AP {box_ap} (DETR, Table 1, 500 epochs)",
        )
        out.append(
            Entry(
                name=f"detr:r{depth}",
                filename=f"detr-r{depth}-{prefix}.pth",
                converter="detr-official",
                url=f"{DETR_RELEASE}detr-r{depth}-{prefix}.pth",
                sha256_prefix=prefix,
                container_key="model",
                expected_dropped=("transformer.encoder.*",),  # DETR's image encoder: E2E-VLP has its own
                **common,
            )
        )
        out.append(
            Entry(
                name=f"detr:hf-r{depth}",
                filename=f"detr-resnet-{depth}.safetensors",
                converter="detr-hf",
                hub=HubFile(f"facebook/detr-resnet-{depth}", "model.safetensors"),
                expected_dropped=("model.encoder.*",),
                **common,
            )
        )
    out.append(
        Entry(
            name="timm:vit_base_patch32_384",
            filename="vit_base_patch32_384.orig_in21k_ft_in1k.safetensors",
            converter="timm-vit",
            preprocessing=Preprocessing(384, HALF, HALF),
            params="88.3M",
            license="Apache-2.0",
            figure="ImageNet-1k top-1 81.7 at 384 (ViT, Table 2's ViT-B/32); ViLT's initialisation",
            hub=HubFile("timm/vit_base_patch32_384.orig_in21k_ft_in1k", "model.safetensors"),
            expected_dropped=("head.*",),
        )
    )
    for depth, top1, params in (("50", "80.4", "25.6M"), ("101", "81.9", "44.6M"), ("152", "82.8", "60.2M")):
        out.append(
            Entry(
                name=f"timm:resnet{depth}",
                filename=f"resnet{depth}.a1_in1k.safetensors",
                converter="timm-resnet",
                preprocessing=Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD),
                params=params,
                license="Apache-2.0",
                figure=f"ImageNet-1k top-1 {top1} at 224 (timm a1 recipe); the CNN grid's initialisation",
                hub=HubFile(f"timm/resnet{depth}.a1_in1k", "model.safetensors"),
                expected_dropped=("fc.*",),
            )
        )
    return out


ENTRIES: dict[str, Entry] = {entry.name: entry for entry in _entries()}


def get_entry(name: str) -> Entry:
    """The entry called ``name``; an unknown name fails, naming the closest ones."""
    if name in ENTRIES:
        return ENTRIES[name]
    close = difflib.get_close_matches(name, list(ENTRIES), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UserError(f"zoo: no entry {name!r}.{hint} `python -m vlp zoo list` shows all {len(ENTRIES)}.")
