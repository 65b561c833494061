"""The built-in cross-encoder teacher: image patches and caption words attend to each other; an ITM head scores.

    u(i, j) = ITM logit of the fused (image i, caption j) pair;  match probability = sigmoid(u)

As in ALBEF/BLIP it also has unimodal ITC towers (used to mine hard negatives while it trains). Encodings are
split so that image and caption encodings can be computed once and cached, and each pair only runs the fusion:

    img = encode_image(images)            # [N, 9, d]
    txt, pad = encode_text(tokens)        # [M, T, d], [M, T]
    logits = fuse(img[i], txt[j], pad[j]) # [P]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.checks import check_choice, check_int
from workbench.data.grammar import MAX_WORDS, PAD, VOCAB
from workbench.models.cached_fusion import caption_states, cls_logits, image_keys_values
from workbench.models.layers import Block, TextEmbedding
from workbench.models.stem import NUM_PATCHES, PatchStem, StemConfig

SCORING_VERSION = 3
"""Version of the pair-scoring numerics, part of the store fingerprint. 2: matmul attention, captions trimmed to
their length, fixed-shape chunks per length. 3: a cross-fusion teacher caches one-sided parts and computes only the
last layer's [CLS] row (:mod:`workbench.models.cached_fusion`)."""
PAIR_CHUNK = 64  # pairs per fusion call on a CPU (every call of one caption length has this shape: deterministic)
PAIR_CHUNK_ACCELERATOR = 4096


@dataclass(frozen=True)
class TeacherConfig:
    """Sizes of the built-in cross-encoder."""

    dim: int = 64
    heads: int = 4
    mlp: int = 128
    image_layers: int = 1  # unimodal image self-attention layers before fusion
    text_layers: int = 1  # unimodal text layers before fusion
    fusion: str = "cross"  # "cross": words cross-attend patches; "single": one stream over [words; patches]
    fusion_layers: int = 3
    prev_token: bool = True
    embed_dim: int = 64  # ITC embedding size
    stem: StemConfig = StemConfig()
    # longest caption the text embedding reads (position embeddings: max_words + 1). Chains of 3 objects have up to
    # 22 words (24 as the relation-capable student presets); a config recorded without this field (the ambiguous-v1
    # teacher) read MAX_WORDS = 15
    max_words: int = 24

    def __post_init__(self) -> None:
        for name in ("dim", "heads", "mlp", "fusion_layers", "embed_dim", "max_words"):
            check_int(name, getattr(self, name), min_value=1)
        check_int("image_layers", self.image_layers, min_value=0)
        check_int("text_layers", self.text_layers, min_value=0)
        check_choice("fusion", self.fusion, ["single", "cross"])
        if self.dim % self.heads:
            raise ValueError(f"dim must be divisible by heads, got dim={self.dim}, heads={self.heads}")

    @classmethod
    def from_dict(cls, d: dict) -> TeacherConfig:
        """The config recorded in a checkpoint; one recorded before ``max_words`` existed read MAX_WORDS words."""
        d = dict(d)
        d["stem"] = StemConfig(**d.get("stem", {}))
        d.setdefault("max_words", MAX_WORDS)
        return cls(**d)


class CrossEncoder(nn.Module):
    """Teacher interface: ``score(images, tokens)`` for aligned pairs; cached-encoding path via ``fuse``."""

    kind = "teacher"

    def __init__(self, config: TeacherConfig | None = None, stem: PatchStem | None = None):
        super().__init__()
        self.config = c = config or TeacherConfig()
        self.stem = stem or PatchStem(c.stem)
        self.stem.requires_grad_(False)
        self.patch_proj = nn.Linear(c.stem.dim, c.dim)
        self.patch_pos = nn.Parameter(torch.randn(NUM_PATCHES, c.dim) * 0.5)
        self.image_blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp) for _ in range(c.image_layers))
        self.text_embed = TextEmbedding(len(VOCAB), c.max_words + 1, c.dim, prev_token=c.prev_token)
        self.text_blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp) for _ in range(c.text_layers))
        cross = c.fusion == "cross"
        self.type_embed = nn.Parameter(torch.randn(2, c.dim) * 0.5)
        self.fusion_blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp, cross=cross) for _ in range(c.fusion_layers))
        self.itm_head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.dim), nn.GELU(), nn.Linear(c.dim, 1))
        self.ground_head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, NUM_PATCHES))
        self.layout_head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, 9))
        self.itc_image = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.embed_dim))
        self.itc_text = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.embed_dim))
        self.itc_log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """float [N, 3, 24, 24] -> patch encodings float [N, 9, d]."""
        with torch.no_grad():
            feats = self.stem(images)
        x = self.patch_proj(feats) + self.patch_pos
        for block in self.image_blocks:
            x = block(x)
        return x

    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """long [M, T] -> (word encodings float [M, T, d], padding bool [M, T]); T <= ``max_words + 1``."""
        if tokens.shape[-1] > self.config.max_words + 1:
            raise ValueError(f"this teacher reads captions of up to {self.config.max_words} words (max_words), got "
                             f"token rows {tokens.shape[-1]} wide ([CLS] + {tokens.shape[-1] - 1} words): train a "
                             "teacher with a larger --max-words for this world")
        pad = tokens == PAD
        x = self.text_embed(tokens)
        for block in self.text_blocks:
            x = block(x, pad=pad)
        return x, pad

    def fuse(self, img: torch.Tensor, txt: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Joint encoding of aligned pairs -> fused word states float [P, T, d] (position 0 = [CLS])."""
        t = txt.shape[1]
        if self.config.fusion == "cross":
            x = txt
            for block in self.fusion_blocks:
                x = block(x, pad=pad, context=img)
            return x
        x = torch.cat([txt + self.type_embed[0], img + self.type_embed[1]], dim=1)
        full_pad = torch.cat([pad, torch.zeros(pad.shape[0], img.shape[1], dtype=torch.bool, device=pad.device)], 1)
        for block in self.fusion_blocks:
            x = block(x, pad=full_pad)
        return x[:, :t]

    def itm_from_fused(self, fused: torch.Tensor) -> torch.Tensor:
        """fused [P, T, d] -> ITM logits float [P]."""
        return self.itm_head(fused[:, 0]).squeeze(-1)

    def itm(self, img: torch.Tensor, txt: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """ITM logits float [P] for aligned encoded pairs."""
        return self.itm_from_fused(self.fuse(img, txt, pad))

    def score(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ITM logits float [P] for aligned pairs (images [P, 3, 24, 24], tokens [P, T])."""
        txt, pad = self.encode_text(tokens)
        return self.itm(self.encode_image(images), txt, pad)

    @property
    def can_cache_fusion(self) -> bool:
        """Whether pairs can be scored through :mod:`workbench.models.cached_fusion` (``fusion="cross"``)."""
        return self.config.fusion == "cross"

    def image_side(self, images: torch.Tensor, cached: bool) -> torch.Tensor:
        """What a pair needs of its image: the encodings [N, 9, d], or (``cached``) every fusion layer's
        cross-attention keys and values [N, L, 2, h, 9, d / h]."""
        img = self.encode_image(images)
        return image_keys_values(self.fusion_blocks, img) if self._cached(cached) else img

    def caption_side(self, tokens: torch.Tensor, cached: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """What a pair needs of its caption: (word encodings, or (``cached``) the first fusion layer's states after
        its self-attention, float [M, T, d]; padding bool [M, T])."""
        txt, pad = self.encode_text(tokens)
        return (caption_states(self.fusion_blocks[0], txt, pad) if self._cached(cached) else txt), pad

    def itm_sides(self, img_side: torch.Tensor, txt_side: torch.Tensor, pad: torch.Tensor | None, cached: bool
                  ) -> torch.Tensor:
        """ITM logits float [P] of aligned pairs from :meth:`image_side` / :meth:`caption_side` rows (the same
        ``cached``); ``pad`` None: captions without padding (cached path only)."""
        if self._cached(cached):
            return cls_logits(self, txt_side, img_side, pad)
        return self.itm(img_side, txt_side, pad)

    def _cached(self, cached: bool) -> bool:
        if cached and not self.can_cache_fusion:
            raise ValueError(f"cached fusion needs a fusion='cross' teacher, got fusion={self.config.fusion!r}")
        return cached

    def itc_embed_image(self, img: torch.Tensor) -> torch.Tensor:
        """img encodings [N, 9, d] -> L2-normalised [N, embed_dim] (mean over patches)."""
        return F.normalize(self.itc_image(img.mean(1)), dim=-1)

    def itc_embed_text(self, txt: torch.Tensor) -> torch.Tensor:
        """word encodings [M, T, d] -> L2-normalised [M, embed_dim] ([CLS] state)."""
        return F.normalize(self.itc_text(txt[:, 0]), dim=-1)

    @property
    def itc_logit_scale(self) -> torch.Tensor:
        return self.itc_log_scale.exp().clamp(max=100.0)

    def config_dict(self) -> dict:
        return asdict(self.config)

    def fingerprint_config(self) -> dict:
        """What besides the weights determines the scores (for the score store's fingerprint): the config and the
        version of the scoring numerics (a store never mixes scores computed by different scoring code)."""
        return self.config_dict() | {"scoring": SCORING_VERSION}

    def pair_scorer(self, split, batch: int = 2048, chunk: int | None = None, cached_fusion: bool = True
                    ) -> PairScorer:
        """A :class:`PairScorer` over a built-in split's (image, caption) index pairs."""
        return PairScorer(self, split.images, split.tokens, batch, chunk, cached_fusion)


class PairScorer:
    """Scores (image index, caption index) pairs of one split with a frozen teacher, encoding each image and caption
    once (cached) so every pair only runs the fusion layers.

    ``scorer(img long [P], cap long [P]) -> ITM logits float [P]``; ``scorer.probability(...)`` gives sigmoids.

    Deterministic: the pairs of a request are grouped by caption length, and each group runs through the fusion
    in chunks of exactly ``chunk`` pairs (the last one padded with copies of the group's first pair) with the
    captions trimmed to that length. So every pair is computed by kernels of one shape (``[chunk, its length]``),
    whatever request it came in, its position there and the other pairs beside it: a pair's score is a function of
    the pair (bit for bit on one machine and device), not of the batch that scored it. Trimming removes padding
    tokens, which are masked keys: the fused [CLS] state is the same function of the pair as with them, and the
    fusion does about a third fewer FLOPs on the built-in world. ``batch`` sets how many images / captions are
    encoded at a time.

    A ``fusion="cross"`` teacher also caches what depends on one side of the pair only (the first fusion layer's
    self-attention per caption, every layer's cross-attention keys and values per image) and runs the last layer
    for the [CLS] row only (:mod:`workbench.models.cached_fusion`); ``cached_fusion=False`` runs every pair through
    the whole fusion instead (the reference the cached path is tested and benchmarked against).
    """

    def __init__(self, teacher: CrossEncoder, images: torch.Tensor, tokens: torch.Tensor, batch: int = 2048,
                 chunk: int | None = None, cached_fusion: bool = True):
        self.teacher, self.images, self.tokens, self.batch = teacher, images, tokens, batch
        self.cached_fusion = cached_fusion and teacher.can_cache_fusion
        device = next(teacher.parameters()).device
        self.chunk = chunk or (PAIR_CHUNK if device.type == "cpu" else PAIR_CHUNK_ACCELERATOR)
        self._img: torch.Tensor | None = None
        self._txt: tuple[torch.Tensor, torch.Tensor] | None = None
        self._lengths: torch.Tensor | None = None
        self.pairs_scored = 0

    @torch.no_grad()
    def _encodings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image side [N, ...], caption side [M, T, d], padding bool [M, T]): the encodings, or for a cross-fusion
        teacher the image keys/values and caption states of :mod:`workbench.models.cached_fusion`."""
        if self._img is None:
            self.teacher.eval()
            dev = next(self.teacher.parameters()).device
            self._img = torch.cat([self.teacher.image_side(x.to(dev), self.cached_fusion)
                                   for x in self.images.split(self.batch)])
            parts = [self.teacher.caption_side(t.to(dev), self.cached_fusion) for t in self.tokens.split(self.batch)]
            self._txt = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
            self._lengths = (~self._txt[1]).sum(1)  # tokens before the padding, per caption
        return self._img, *self._txt

    @torch.no_grad()
    def __call__(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        enc_img, txt, pad = self._encodings()
        n = len(img)
        if n == 0:
            return torch.empty(0)
        img, cap = img.to(enc_img.device), cap.to(enc_img.device)
        lengths = self._lengths[cap]
        out = torch.empty(n, device=enc_img.device)
        for length in lengths.unique().tolist():
            rows = (lengths == length).nonzero().squeeze(1)
            i, c = img[rows], cap[rows]
            m = len(rows)
            padded = -(-m // self.chunk) * self.chunk
            if padded > m:  # fill the last chunk with copies of the first pair: every call has one shape
                i, c = torch.cat([i, i[:1].expand(padded - m)]), torch.cat([c, c[:1].expand(padded - m)])
            chunks = zip(i.split(self.chunk), c.split(self.chunk), strict=True)
            scores = [self.teacher.itm_sides(enc_img[a], txt[b, :length], None if self.cached_fusion else
                                             pad[b, :length], self.cached_fusion).float() for a, b in chunks]
            out[rows] = torch.cat(scores)[:m]
        self.pairs_scored += n
        return out.cpu()

    def probability(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(img, cap))


def load_teacher(folder) -> CrossEncoder:
    """A trained teacher from a checkpoint folder (checksum verified; wrong kind or corrupt -> CheckpointError)."""
    from workbench.io import CheckpointError, load_checkpoint

    meta, weights = load_checkpoint(folder, kind="teacher")
    teacher = CrossEncoder(TeacherConfig.from_dict(meta["config"]))
    try:
        teacher.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {folder} does not fit a teacher of its recorded config: {err}") from err
    return teacher.eval().requires_grad_(False)
