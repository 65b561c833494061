"""BLIP teacher cost: cached image features (``HFPairScorer``) vs the model's own full forward per pair.

Re-ranking and mining score every image against K captions. The model's own forward re-runs the vision
transformer for every pair; ``HFPairScorer`` runs it once per image and only the fusion layers per pair. Both
score the same pairs with the same randomly initialised BLIP (a scaled-down ViT/BERT, built offline), timed side
by side in one run (median over repeats), and their scores are checked to agree.

    PYTHONPATH=. python benchmarks/hf_teacher.py                      # 16 images x 16 captions each
    PYTHONPATH=. python benchmarks/hf_teacher.py --images 8 --k 8 --repeats 2   # a quick run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hf_fixtures import save_tiny_blip, write_tiny_karpathy  # noqa: E402

from workbench.data.karpathy import load_karpathy  # noqa: E402
from workbench.models.hf import HFPairScorer, HFTeacher  # noqa: E402


def _pairs(num_images: int, num_captions: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image with k random captions (a re-ranking slate): img long [N * k], cap long [N * k]."""
    g = torch.Generator().manual_seed(seed)
    img = torch.arange(num_images).repeat_interleave(k)
    return img, torch.randint(num_captions, (num_images * k,), generator=g)


def _full_forward(teacher: HFTeacher, pixels: torch.Tensor, tokens: dict, img, cap, batch: int) -> torch.Tensor:
    """The model's own forward (vision + fusion) per pair, on preprocessed inputs: log-odds [P]."""
    out = []
    with torch.no_grad():
        for i, c in zip(img.split(batch), cap.split(batch), strict=True):
            z = teacher.model(input_ids=tokens["input_ids"][c], attention_mask=tokens["attention_mask"][c],
                              pixel_values=pixels[i], use_itm_head=True).itm_score
            out.append(z[:, 1] - z[:, 0])
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--k", type=int, default=16, help="captions scored per image")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        json_path = write_tiny_karpathy(root / "data", n_images=max(5 * args.images // 3 + 2, 10))
        split = load_karpathy(json_path, root / "data" / "images", "train", max_images=args.images)
        teacher = HFTeacher(save_tiny_blip(root / "blip", hidden=args.hidden, image_size=args.image_size),
                            device="cpu")
        img, cap = _pairs(split.num_images, split.num_captions, args.k)
        pixels = teacher.prepare_images(split.load_images(range(split.num_images)))
        tokens = teacher.prepare_texts(split.texts)
        times: dict[str, list[float]] = {"full forward": [], "cached images": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            full = _full_forward(teacher, pixels, tokens, img, cap, args.batch)
            times["full forward"].append(time.perf_counter() - start)
            scorer = HFPairScorer(teacher, split, batch=args.batch)
            start = time.perf_counter()
            cached = scorer(img, cap)
            times["cached images"].append(time.perf_counter() - start)
        gap = (full - cached).abs().max().item()
    median = {name: statistics.median(t) for name, t in times.items()}
    seq = 1 + (args.image_size // 8) ** 2
    print(f"BLIP (random, hidden {args.hidden}, {seq} image tokens), {split.num_images} images x {args.k} captions "
          f"= {len(img)} pairs, batch {args.batch}, {torch.get_num_threads()} thread(s), CPU")
    for name, seconds in median.items():
        print(f"  {name:14s} {seconds * 1e3:8.1f} ms  ({seconds / len(img) * 1e3:.3f} ms/pair)")
    print(f"  vision passes: full forward {len(img)}, cached {scorer.images_encoded}")
    print(f"  speed-up of cached images: {median['full forward'] / median['cached images']:.2f}x;  "
          f"max |score difference| {gap:.2e}")


if __name__ == "__main__":
    main()
