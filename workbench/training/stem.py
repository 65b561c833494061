"""Pre-training the shared image stem on per-cell attribute labels (the analogue of a pretrained backbone)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.checks import check_int
from workbench.data.world import Split
from workbench.models.stem import ATTRIBUTE_CLASSES, PatchStem, StemConfig, cell_labels


def split_cell_labels(split: Split) -> torch.Tensor:
    """long [N, 9, 3]: per-cell (shape, colour, size) class of every image, 0 = empty."""
    return torch.stack([cell_labels(s.objects) for s in split.scenes])


def stem_loss(stem: PatchStem, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the shape, colour and size heads over all cells (images [B,3,24,24], labels [B,9,3])."""
    logits = stem.predict(images)
    return sum(
        F.cross_entropy(logits[k].flatten(0, 1), labels[..., a].flatten()) for a, k in enumerate(ATTRIBUTE_CLASSES)
    )


@torch.no_grad()
def stem_accuracy(stem: PatchStem, split: Split, batch: int = 1024) -> dict[str, float]:
    """Per-attribute accuracy over all cells of the split (empty cells included), in percent."""
    labels = split_cell_labels(split)
    correct = torch.zeros(len(ATTRIBUTE_CLASSES))
    for i in range(0, split.num_images, batch):
        logits = stem.predict(split.images[i : i + batch])
        for a, k in enumerate(ATTRIBUTE_CLASSES):
            correct[a] += (logits[k].argmax(-1) == labels[i : i + batch, :, a]).sum()
    total = labels.shape[0] * labels.shape[1]
    return {f"stem_{k}_acc": 100 * correct[a].item() / total for a, k in enumerate(ATTRIBUTE_CLASSES)}


def pretrain_stem(
    train: Split,
    *,
    steps: int = 600,
    batch: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    config: StemConfig | None = None,
) -> PatchStem:
    """Train a :class:`PatchStem` to predict every cell's attributes; returns it frozen in eval mode."""
    check_int("steps", steps, min_value=1)
    check_int("batch", batch, min_value=1)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    stem = PatchStem(config)
    labels = split_cell_labels(train)
    opt = torch.optim.AdamW(stem.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        idx = torch.randint(train.num_images, (batch,), generator=gen)
        loss = stem_loss(stem, train.images[idx], labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return stem.eval().requires_grad_(False)
