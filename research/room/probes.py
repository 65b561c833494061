"""Probes on FROZEN embeddings: which tower holds "where is each object" / "which argument comes first".

Image probe ("column" / "row"): for each (shape, colour) kind, a linear (or MLP) classifier reads an image's
embedding and predicts the kind's column (3 classes) / row, over images that hold that kind.
Text probe ("role"): for each (shape, colour) kind and axis (horizontal / vertical), over relational captions
mentioning that kind with its colour, predict whether the kind is the canonical first argument ("X left of / above
Y") or the second. A bag-of-words embedding cannot do better than chance on it (argument order is all it asks).
Probes are fit on the train split's embeddings and scored on the test split's; one probe per group (kind, or
kind x axis), all fit jointly. Controls: the same probes on hand-built features that do / do not hold the answer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.data.grammar import canonical
from workbench.data.scene import COLOURS, SHAPES
from workbench.data.world import Split

N_KINDS = len(SHAPES) * len(COLOURS)


def image_targets(split: Split) -> dict[str, torch.Tensor]:
    """Rows (image, kind, column, row) for every object of every image."""
    img, kind, col, row = [], [], [], []
    for i, scene in enumerate(split.scenes):
        for o in scene.objects:
            img.append(i)
            kind.append(o.shape * len(COLOURS) + o.colour)
            col.append(o.col)
            row.append(o.row)
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return {"item": t(img), "group": t(kind), "column": t(col), "row": t(row)}


def text_targets(split: Split) -> dict[str, torch.Tensor]:
    """Rows (caption, kind x axis group, is-first label) for coloured mentions of relational captions.

    Captions with more than one relation (chains) use their first relation's pair."""
    cap, group, label = [], [], []
    for c, spec in enumerate(split.captions):
        if spec.relation is None:
            continue
        pair = CaptionPair(spec)
        canon = canonical(pair.spec)
        axis = 0 if canon.relation == 0 else 1
        for j, m in enumerate(canon.mentions):
            if m.colour is None:
                continue
            cap.append(c)
            group.append((m.shape * len(COLOURS) + m.colour) * 2 + axis)
            label.append(int(j == 0))
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return {"item": t(cap), "group": t(group), "role": t(label)}


class CaptionPair:
    """The (first relation's) two-mention caption of a spec."""

    def __init__(self, spec):
        from workbench.data.scene import CaptionSpec

        self.spec = CaptionSpec(tuple(spec.mentions[:2]), spec.relation)


def fit_group_probe(x_tr, g_tr, y_tr, x_te, g_te, y_te, n_groups: int, n_classes: int, *, hidden: int = 0,
                    l2: float = 1e-3, steps: int = 300, seed: int = 0) -> dict[str, float]:
    """One classifier per group on features x [n, E]; returns test accuracy and the majority baseline (both in %).

    Linear (``hidden=0``): logits = x @ W[g] + b[g]; MLP: a shared hidden layer per group (ReLU, ``hidden`` units).
    Full-batch L-BFGS on the mean cross-entropy + ``l2`` * squared weights. Features are standardised on train.
    """
    torch.manual_seed(seed)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    e = x_tr.shape[1]
    if hidden:
        w1 = (torch.randn(n_groups, e, hidden) / e**0.5).requires_grad_()
        b1 = torch.zeros(n_groups, hidden, requires_grad=True)
        w2 = (torch.randn(n_groups, hidden, n_classes) / hidden**0.5).requires_grad_()
        params = [w1, b1, w2]
    else:
        w2 = torch.zeros(n_groups, e, n_classes, requires_grad=True)
        params = [w2]
    b = torch.zeros(n_groups, n_classes, requires_grad=True)
    params.append(b)

    def logits(x, g):
        if hidden:
            h = F.relu(torch.einsum("ne,neh->nh", x, w1[g]) + b1[g])
            return torch.einsum("nh,nhc->nc", h, w2[g]) + b[g]
        return torch.einsum("ne,nec->nc", x, w2[g]) + b[g]

    opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits(x_tr, g_tr), y_tr) + l2 * sum((p**2).sum() for p in params[:-1]) / n_groups
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = (logits(x_te, g_te).argmax(1) == y_te).float().mean().item()
        train_acc = (logits(x_tr, g_tr).argmax(1) == y_tr).float().mean().item()
    # majority class per group, learned on train
    counts = torch.zeros(n_groups, n_classes)
    counts.index_put_((g_tr, y_tr), torch.ones(len(y_tr)), accumulate=True)
    base = (counts.argmax(1)[g_te] == y_te).float().mean().item()
    return {"acc": 100 * acc, "train_acc": 100 * train_acc, "majority": 100 * base, "n_test": len(y_te)}


def probe_embeddings(train: Split, test: Split, img_tr, txt_tr, img_te, txt_te, hidden: int = 0,
                     l2: float = 1e-3) -> dict[str, dict[str, float]]:
    """Image column/row probes and the text role probe on given embeddings (train split fit, test split scored)."""
    out = {}
    if img_tr is not None:
        a, b = image_targets(train), image_targets(test)
        for target in ("column", "row"):
            out[f"image_{target}"] = fit_group_probe(img_tr[a["item"]], a["group"], a[target], img_te[b["item"]],
                                                     b["group"], b[target], N_KINDS, 3, hidden=hidden, l2=l2)
    if txt_tr is not None:
        a, b = text_targets(train), text_targets(test)
        out["text_role"] = fit_group_probe(txt_tr[a["item"]], a["group"], a["role"], txt_te[b["item"]], b["group"],
                                           b["role"], N_KINDS * 2, 2, hidden=hidden, l2=l2)
    return out


# ------------------------------------------------------------------------------------------- control features


def stem_cell_features(stem, split: Split, pooled: bool) -> torch.Tensor:
    """The frozen stem's 9 cell features, concatenated ([N, 9 * d]: position kept) or averaged ([N, d])."""
    with torch.no_grad():
        f = torch.cat([stem(x) for x in split.images.split(1024)])
    return f.mean(1) if pooled else f.flatten(1)


def bag_of_words(split: Split) -> torch.Tensor:
    """float [M, V]: word counts (no order)."""
    from workbench.data.grammar import VOCAB

    out = torch.zeros(split.num_captions, len(VOCAB))
    out.scatter_add_(1, split.tokens, torch.ones_like(split.tokens, dtype=torch.float))
    out[:, :4] = 0  # specials
    return out


def canonical_roles(split: Split) -> torch.Tensor:
    """float [M, 2 * kinds]: one-hot of the canonical first and second argument's kind (holds the answer)."""
    out = torch.zeros(split.num_captions, 2 * N_KINDS)
    for c, spec in enumerate(split.captions):
        if spec.relation is None:
            continue
        canon = canonical(CaptionPair(spec).spec)
        for j, m in enumerate(canon.mentions):
            if m.colour is not None:
                out[c, j * N_KINDS + m.shape * len(COLOURS) + m.colour] = 1
    return out
