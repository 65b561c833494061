"""Tiny offline stand-ins for the real setting: a Karpathy-format dataset and tiny `transformers` BLIP / CLIP models.

Everything is generated into a folder, so tests (and later end-to-end tests through the CLI) run with no network:

    json_path = write_tiny_karpathy(tmp / "data", n_images=20)           # JSON + images/ of small PNGs
    blip = save_tiny_blip(tmp / "blip")   # BlipForImageTextRetrieval + BlipProcessor, randomly initialised
    clip = save_tiny_clip(tmp / "clip")   # CLIPModel + CLIPProcessor

The tokenizers are built from the caption grammar's word list: ``BertTokenizer(vocab_path)`` for BLIP (in
transformers 5.x ``BertTokenizerFast(vocab_file=...)`` silently maps every word to ``[UNK]``) and a CLIP BPE
tokenizer whose merges spell each word. Weights use a large init range so that random models still give
clearly different scores to different pairs (the oracle tests compare values, which must not all be equal), and
BLIP has dropout so that a model left in train mode would give different, random scores.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

COLOURS = ["red", "green", "blue", "yellow", "white", "black"]
SHAPES = ["cube", "ball", "cone", "ring"]
SIZES = ["small", "large"]
RELATIONS = ["left of", "right of", "above", "below", "next to"]
FILLERS = ["a", "an", "the", "and", "with", "is", "photo", "of", "two", "there"]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[ENC]"]  # [ENC]: BLIP's ITM first token


def vocabulary() -> list[str]:
    """Every word the caption grammar can produce, sorted (no duplicates)."""
    words = COLOURS + SHAPES + SIZES + FILLERS + [w for r in RELATIONS for w in r.split()]
    return sorted(set(words))


def _caption(rng: random.Random) -> str:
    a = f"{rng.choice(SIZES)} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    b = f"{rng.choice(COLOURS)} {rng.choice(SHAPES)}"
    return f"A {a} {rng.choice(RELATIONS)} the {b}."


def _split_of(i: int, n_images: int, dataset: str) -> str:
    """Last 20% test, the 20% before val; COCO puts the first third of the rest in restval."""
    n_eval = max(1, n_images // 5)
    if i >= n_images - n_eval:
        return "test"
    if i >= n_images - 2 * n_eval:
        return "val"
    return "restval" if dataset == "coco" and i < (n_images - 2 * n_eval) // 3 else "train"


def write_tiny_karpathy(
    folder: str | Path,
    n_images: int = 20,
    dataset: str = "flickr30k",
    seed: int = 0,
    *,
    extra_caption_every: int = 3,
    image_size: tuple[int, int] = (40, 48),
) -> Path:
    """Write a Karpathy-format JSON and ``n_images`` small random RGB PNGs under ``folder``; return the JSON path.

    Every image has 5 captions, and every ``extra_caption_every``-th image a 6th (as a few COCO images do), so
    readers can be checked to keep the first 5. COCO images go to ``folder/images/{train2014,val2014}/`` with a
    ``filepath``; Flickr30K images to ``folder/images/``. ``imgid`` runs 0..n-1 in file order and ``sentid``
    numbers all sentences in file order from 1000.
    """
    from PIL import Image

    folder = Path(folder)
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    records, sentid = [], 1000
    for i in range(n_images):
        split = _split_of(i, n_images, dataset)
        n_caps = 6 if extra_caption_every and i % extra_caption_every == 0 else 5
        sentences = [{"raw": _caption(rng), "sentid": sentid + k, "imgid": i} for k in range(n_caps)]
        for s in sentences:
            s["tokens"] = s["raw"].lower().rstrip(".").split()
        sentid += n_caps
        record = {"imgid": i, "split": split, "sentences": sentences, "sentids": [s["sentid"] for s in sentences]}
        if dataset == "coco":
            record["filepath"] = "val2014" if split in ("val", "test") else "train2014"
            record["filename"] = f"COCO_{record['filepath']}_{i:012d}.jpg"
        else:
            record["filename"] = f"{1000 + i}.jpg"
        path = folder / "images" / record.get("filepath", "") / record["filename"]
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np_rng.integers(0, 256, size=(*image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, format="PNG")  # PNG bytes under a .jpg name, as PIL sniffs the format
        records.append(record)
    json_path = folder / ("dataset_coco.json" if dataset == "coco" else "dataset_flickr30k.json")
    json_path.write_text(json.dumps({"images": records, "dataset": dataset}))
    return json_path


def _bert_tokenizer(folder: Path):
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab_path = folder / "vocab.txt"
    vocab_path.write_text("\n".join(BERT_SPECIALS + vocabulary()) + "\n")
    return BertTokenizer(str(vocab_path))


def save_tiny_blip(folder: str | Path, seed: int = 0, *, hidden: int = 32, image_size: int = 32) -> Path:
    """Save a randomly initialised ``BlipForImageTextRetrieval`` and its ``BlipProcessor`` to ``folder``."""
    import torch
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipProcessor

    folder = Path(folder)
    tokenizer = _bert_tokenizer(folder / "_vocab")
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4)
    config = BlipConfig(
        vision_config=dict(image_size=image_size, patch_size=8, initializer_range=0.2, attention_dropout=0.1, **common),
        text_config=dict(
            vocab_size=len(tokenizer), max_position_embeddings=64, encoder_hidden_size=hidden, initializer_range=0.2,
            hidden_dropout_prob=0.1,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id, **common,
        ),
        image_text_hidden_size=16,
    )
    torch.manual_seed(seed)
    BlipForImageTextRetrieval(config).save_pretrained(folder)
    BlipProcessor(image_processor=_image_processor("blip", image_size), tokenizer=tokenizer).save_pretrained(folder)
    return folder


def _image_processor(kind: str, size: int):
    """The PIL-backed image processors (the default ones want torchvision, which tests do not need)."""
    import transformers

    if kind == "blip":
        cls = getattr(transformers, "BlipImageProcessorPil", None) or transformers.BlipImageProcessor
        return cls(size={"height": size, "width": size})
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def clip_bpe_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A CLIP BPE vocabulary over the grammar's words: every letter (plain and word-final) and merges that spell
    each word left to right, so most words become one token and anything else falls back to letters."""
    vocab: dict[str, int] = {}
    merges: list[tuple[str, str]] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for token in ["<|startoftext|>", "<|endoftext|>"]:
        add(token)
    for letter in "abcdefghijklmnopqrstuvwxyz":
        add(letter)
        add(letter + "</w>")
    for word in vocabulary():
        pieces = [*word[:-1], word[-1] + "</w>"]
        prefix = pieces[0]
        for piece in pieces[1:]:
            if (prefix, piece) not in merges:
                merges.append((prefix, piece))
            prefix += piece
            add(prefix)
    return vocab, merges


def save_tiny_clip(folder: str | Path, seed: int = 0, *, hidden: int = 32, image_size: int = 32) -> Path:
    """Save a randomly initialised ``CLIPModel`` and its ``CLIPProcessor`` to ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder = Path(folder)
    vocab, merges = clip_bpe_vocabulary()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **common),
        vision_config=dict(image_size=image_size, patch_size=8, **common),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=_image_processor("clip", image_size), tokenizer=tokenizer).save_pretrained(folder)
    return folder
