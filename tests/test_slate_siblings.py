"""research/fair/slate_siblings.py: which mined negatives are contrast siblings, how the teacher and the student order
the positive against them (hand-computed cases)."""

from types import SimpleNamespace

import pytest
import torch

from research.fair.slate_siblings import sibling_mask, student_sibling_accuracy, summarise, teacher_view


def _split():
    """Two groups of two images (0, 1 | 2, 3), two captions per image: caption c belongs to image c // 2."""
    return SimpleNamespace(name="toy", groups=torch.tensor([0, 0, 1, 1]), num_images=4,
                           caption_image=torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))


def test_sibling_mask_same_group_other_image():
    groups = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([0, 2])
    cand = torch.tensor([[1, 0, 2], [3, 1, 2]])
    assert sibling_mask(groups, query, cand).tolist() == [[True, False, False], [True, False, False]]


def test_student_sibling_accuracy_counts_own_above_sibling_pairs():
    split = _split()
    img = torch.eye(4)
    # image 0 scores its own captions 1.0 and 0.2, its sibling's (image 1) 0.5 and 0.5: 2 of 4 pairs right;
    # image 1 scores own 1, 1 and image 0's 0, 0: 4 of 4; group 1 all right (8 of 8) -> 14 / 16
    txt = torch.zeros(8, 4)
    txt[0, 0], txt[1, 0], txt[2, 0], txt[3, 0] = 1.0, 0.2, 0.5, 0.5
    txt[2, 1], txt[3, 1] = 1.0, 1.0
    txt[4:6, 2] = 1.0
    txt[6:8, 3] = 1.0
    assert student_sibling_accuracy(img, txt, split) == pytest.approx(100 * 14 / 16)


def test_teacher_view_positive_above_sibling_and_top_m():
    split = _split()
    table = torch.full((4, 8), -5.0)  # teacher logit of (image, caption)
    table[0, 0], table[0, 1] = 3.0, 1.0  # image 0's own captions
    table[0, 2], table[0, 3] = 2.0, -1.0  # its sibling's: one above its weaker own caption
    table[0, 4] = 0.0  # another group's caption (not a sibling)

    def teacher(img, cap):
        logits = table[img, cap]
        return logits, torch.sigmoid(logits)

    mined = {"img": torch.tensor([[0, 0, 0, 0]]), "cap": torch.tensor([[2, 3, 4, 5]]),
             "valid": torch.tensor([[True, True, True, False]]), "query_img": torch.tensor([0]),
             "sibling": torch.tensor([[True, True, False, False]])}
    view = teacher_view(mined, split, teacher, "i2t", top_m=2)
    # pairs (own 3.0 | 1.0) x (sibling 2.0 | -1.0): 3 of 4 right; the top-2 of the slate (2.0, 0.0): 1 sibling of 2
    assert view["positive_above_sibling"] == pytest.approx(75.0)
    assert view["top_m_sibling_share"] == pytest.approx(50.0)


def test_summarise_groups_seeds_by_method():
    out = summarise({"itc_seed0": {"a": {"b": 1.0}}, "itc_seed1": {"a": {"b": 3.0}}, "cprd_seed0": {"a": {"b": 5.0}}})
    assert out["itc"]["a.b"]["values"] == [1.0, 3.0] and out["itc"]["a.b"]["mean"] == 2.0
    assert out["cprd"]["a.b"]["n"] == 1
