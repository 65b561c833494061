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
from workbench.data.scene import COLOURS, SHAPES, CaptionSpec
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

    One row per relation fact and coloured mention, from the fact's canonical form ("X left of / above Y"); in
    chains a (kind, axis) that is first in one fact and second in another is left out (no single answer)."""
    cap, group, label = [], [], []
    for c, spec in enumerate(split.captions):
        rows: dict[int, set[int]] = {}
        for i, j, relation in spec.relations:
            canon = canonical(CaptionSpec((spec.mentions[i], spec.mentions[j]), relation))
            axis = 0 if canon.relation == 0 else 1
            for k, m in enumerate(canon.mentions):
                if m.colour is not None:
                    rows.setdefault((m.shape * len(COLOURS) + m.colour) * 2 + axis, set()).add(int(k == 0))
        for g, labels in rows.items():
            if len(labels) == 1:
                cap.append(c)
                group.append(g)
                label.append(labels.pop())
    t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
    return {"item": t(cap), "group": t(group), "role": t(label)}


def fit_group_probe(x_tr, g_tr, y_tr, x_te, g_te, y_te, n_groups: int, n_classes: int, *, hidden: int = 0,
                    l2: float = 1e-3, steps: int = 200, seed: int = 0) -> dict[str, float]:
    """Classifier(s) on features x [n, E]; returns test / train accuracy and the per-group majority baseline (%).

    Linear (``hidden=0``): one linear classifier per group, logits = x @ W[g] + b[g], L2 ``l2``.
    MLP (``hidden`` > 0): one shared ReLU MLP on [x, one-hot(group)] (can model any group x feature interaction).
    Full-batch L-BFGS on the mean cross-entropy. Features are standardised on train.
    """
    torch.manual_seed(seed)
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    e = x_tr.shape[1]
    if hidden:
        net = torch.nn.Sequential(torch.nn.Linear(e + n_groups, hidden), torch.nn.ReLU(),
                                  torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_classes))
        params = list(net.parameters())

        def logits(x, g):
            return net(torch.cat([x, F.one_hot(g, n_groups).float()], 1))

        def penalty():
            return l2 * sum((m.weight**2).sum() for m in net if isinstance(m, torch.nn.Linear))
    else:
        w = torch.zeros(e, n_groups * n_classes, requires_grad=True)
        b = torch.zeros(n_groups, n_classes, requires_grad=True)
        params = [w, b]

        def logits(x, g):
            out = (x @ w).view(len(x), n_groups, n_classes)
            return out[torch.arange(len(x)), g] + b[g]

        def penalty():
            return l2 * (w**2).sum() / n_groups

    opt = torch.optim.LBFGS(params, lr=1, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits(x_tr, g_tr), y_tr) + penalty()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = (logits(x_te, g_te).argmax(1) == y_te).float().mean().item()
        train_acc = (logits(x_tr, g_tr).argmax(1) == y_tr).float().mean().item()
    counts = torch.zeros(n_groups, n_classes)
    counts.index_put_((g_tr, y_tr), torch.ones(len(y_tr)), accumulate=True)
    base = (counts.argmax(1)[g_te] == y_te).float().mean().item()
    return {"acc": 100 * acc, "train_acc": 100 * train_acc, "majority": 100 * base, "n_test": len(y_te)}


def probe_embeddings(train: Split, test: Split, img_tr, txt_tr, img_te, txt_te, hidden: int = 0,
                     l2: float = 1e-4) -> dict[str, dict[str, float]]:
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
    """float [M, 2 * axes * kinds]: one-hot of each relation fact's canonical first / second argument kind, per axis
    (holds the answer of the role probe)."""
    out = torch.zeros(split.num_captions, 4 * N_KINDS)
    for c, spec in enumerate(split.captions):
        for i, j, relation in spec.relations:
            canon = canonical(CaptionSpec((spec.mentions[i], spec.mentions[j]), relation))
            axis = 0 if canon.relation == 0 else 1
            for k, m in enumerate(canon.mentions):
                if m.colour is not None:
                    out[c, (axis * 2 + k) * N_KINDS + m.shape * len(COLOURS) + m.colour] = 1
    return out
