"""A controlled teacher: scores computed from the world's ground truth, with knobs for noise and concentration.

**This is a control, not a model.** It knows the fraction of each caption's facts that hold in each scene
(``relevance``) and turns it into an ITM-like logit::

    u(i, j) = concentration * (relevance(i, j) - 0.5) * 2 + bias + noise * N(0, 1)      (probability = sigmoid(u))

- ``noise``: std of Gaussian noise in logit units (0 = the perfect order of the ground truth, ties included);
- ``concentration``: how peaked the match probabilities are (large = most pairs near 0, matches near 1, as the
  paper observes for real cross-encoders; small = probabilities near 0.5);
- ``bias``: shifts every logit (a teacher that says "no" more often).

The noise of a pair is a deterministic hash of (seed, image id, caption id), so the same pair always gets the
same score (the score store and repeated runs stay consistent). Use it to ask how distillation gains depend on
teacher quality and score shape; the gap bars of the workbench are about the trained teacher, never this one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from workbench.checks import check_float, check_int


@dataclass(frozen=True)
class ControlledConfig:
    noise: float = 0.0
    concentration: float = 6.0
    bias: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_float("noise", self.noise, min_value=0.0)
        check_float("concentration", self.concentration, min_value=0.0)
        check_float("bias", self.bias)
        check_int("seed", self.seed, min_value=0)


def _gaussian_hash(seed: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Deterministic standard-normal values float [P] from integer keys (Box-Muller on two 31-bit hashes)."""
    x = (a.long() * 1_000_003 + b.long() * 998_244_353 + seed * 7_919) & 0x7FFFFFFF
    u1 = ((x * 1_103_515_245 + 12_345) & 0x7FFFFFFF).double() / 2**31
    u2 = ((x * 69_069 + 1) & 0x7FFFFFFF).double() / 2**31
    z = torch.sqrt(-2 * torch.log(u1.clamp(min=1e-12))) * torch.cos(2 * torch.pi * u2)
    return z.float()


class ControlledTeacher:
    """Ground-truth teacher for one split: ``scorer(img [P], cap [P]) -> logits [P]`` (split indices)."""

    kind = "controlled_teacher"

    def __init__(self, split, config: ControlledConfig | None = None):
        self.split, self.config = split, config or ControlledConfig()
        self.pairs_scored = 0
        self.batch = 1 << 16

    def __call__(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        c = self.config
        img, cap = img.cpu(), cap.cpu()
        rel = self.split.relevance_pairs(img, cap)
        u = c.concentration * (2 * rel - 1) + c.bias
        if c.noise:
            u = u + c.noise * _gaussian_hash(c.seed, self.split.image_ids[img], self.split.caption_ids[cap])
        self.pairs_scored += len(img)
        return u

    def probability(self, img: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(img, cap))

    def scores(self, img: torch.Tensor, cap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [P], probs [P])`` on ``img``'s device: the ``teacher_scores`` contract of ``fit``."""
        u = self(img, cap).to(img.device)
        return u, torch.sigmoid(u)

    def config_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self.config)}
