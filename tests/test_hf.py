"""transformers adapters on tiny offline BLIP / CLIP models: oracles against the models' own forward passes,
caching (each image encoded once), a frozen teacher, student gradients, errors, and retrieval end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hf_fixtures import save_tiny_blip, save_tiny_clip, vocabulary, write_tiny_karpathy

from workbench.data.karpathy import KarpathySplit, load_karpathy
from workbench.evaluation.retrieval import rerank_metrics, retrieval_metrics
from workbench.models.hf import HFPairScorer, HFStudent, HFTeacher, encode_split, resolve_dtype


@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def paths(tmp_path_factory, offline) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    json_path = write_tiny_karpathy(root / "data", n_images=20)
    return {"blip": save_tiny_blip(root / "blip"), "clip": save_tiny_clip(root / "clip"), "json": json_path,
            "images": root / "data" / "images"}


@pytest.fixture(scope="module")
def split(paths) -> KarpathySplit:
    return load_karpathy(paths["json"], paths["images"], "train")  # 12 images, 60 captions


@pytest.fixture(scope="module")
def teacher(paths) -> HFTeacher:
    return HFTeacher(paths["blip"], device="cpu")


@pytest.fixture(scope="module")
def blip_model(paths):
    from transformers import BlipForImageTextRetrieval

    return BlipForImageTextRetrieval.from_pretrained(paths["blip"], local_files_only=True).eval()


def _forward_log_odds(model, teacher: HFTeacher, split: KarpathySplit, img, cap, first_token=None) -> torch.Tensor:
    """Oracle: the model's own full forward (vision + fusion) on the pairs, with the processor's joint call."""
    inputs = teacher.processor(images=split.load_images(img), text=[split.texts[c] for c in cap.tolist()],
                               return_tensors="pt", padding=True)
    if first_token is not None:
        inputs["input_ids"][:, 0] = first_token
    with torch.no_grad():
        z = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                  attention_mask=inputs["attention_mask"], use_itm_head=True).itm_score
    return z


def _pairs(split: KarpathySplit, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(split.num_images, (n,), generator=g), torch.randint(split.num_captions, (n,), generator=g)


# --- tokenizers built from the generated vocabulary ---------------------------------------------------------------


def test_reloaded_tokenizers_know_every_word(teacher, paths) -> None:
    words = vocabulary()
    tokens = teacher.prepare_texts([" ".join(words)])["input_ids"][0]
    assert teacher.processor.tokenizer.unk_token_id not in tokens.tolist()
    assert len(tokens) == len(words) + 2  # [CLS] w1 ... wn [SEP]: one token per word
    clip = HFStudent(paths["clip"], "clip", device="cpu")
    clip_tokens = clip.prepare_texts(["a red cube left of the ball"])["input_ids"][0].tolist()
    assert clip.processor.tokenizer.convert_ids_to_tokens(clip_tokens)[1:4] == ["a</w>", "red</w>", "cube</w>"]


# --- teacher ----------------------------------------------------------------------------------------------------


def test_teacher_is_frozen_in_eval_mode_and_fp32_on_cpu(teacher, split) -> None:
    assert teacher.device.type == "cpu" and teacher.dtype == torch.float32
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    pixels = teacher.prepare_images(split.load_images([0, 1, 2]))
    with torch.enable_grad():
        embeds = teacher.encode_image(pixels)
        tokens = teacher.prepare_texts(split.texts[:3])
        logits = teacher.itm(embeds, tokens["input_ids"], tokens["attention_mask"])
    assert embeds.shape == (3, 1 + (32 // 8) ** 2, 32) and not embeds.requires_grad
    assert logits.shape == (3,) and logits.dtype == torch.float32 and not logits.requires_grad


def test_teacher_forces_eval_mode_even_if_someone_calls_train(teacher, split) -> None:
    img, cap = torch.arange(4), torch.arange(4) * 5
    reference = HFPairScorer(teacher, split)(img, cap)
    teacher.model.train()  # dropout would make the scores random
    try:
        again = [HFPairScorer(teacher, split)(img, cap) for _ in range(2)]
        assert not teacher.model.training
    finally:
        teacher.model.eval()
    assert torch.equal(again[0], reference) and torch.equal(again[1], reference)


def test_pair_scorer_equals_the_models_own_forward(teacher, blip_model, split) -> None:
    img, cap = _pairs(split, 23, seed=0)
    img[:5] = 3  # repeated images, and batches that do not divide P
    scorer = HFPairScorer(teacher, split, batch=5, image_batch=4)
    u = scorer(img, cap)
    z = _forward_log_odds(blip_model, teacher, split, img, cap)
    assert u.shape == (23,) and u.dtype == torch.float32 and u.device.type == "cpu"
    assert torch.allclose(u, z[:, 1] - z[:, 0], atol=1e-5, rtol=1e-4)
    assert u.std() > 0.05  # values differ across pairs, so the comparison means something
    assert torch.allclose(scorer.probability(img, cap), z.softmax(-1)[:, 1], atol=1e-6)
    assert torch.allclose(teacher.score(split.load_images(img), [split.texts[c] for c in cap.tolist()]), u, atol=1e-5)


def test_enc_first_token_matches_forward_with_replaced_token(paths, blip_model, split) -> None:
    teacher = HFTeacher(paths["blip"], device="cpu", itm_first_token="[ENC]")
    enc_id = teacher.processor.tokenizer.convert_tokens_to_ids("[ENC]")
    img, cap = _pairs(split, 9, seed=1)
    u = HFPairScorer(teacher, split)(img, cap)
    z = _forward_log_odds(blip_model, teacher, split, img, cap, first_token=enc_id)
    z_cls = _forward_log_odds(blip_model, teacher, split, img, cap)
    assert torch.allclose(u, z[:, 1] - z[:, 0], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(u, z_cls[:, 1] - z_cls[:, 0], atol=1e-3)
    assert teacher.config_for_fingerprint()["itm_first_token"] == "[ENC]"
    with pytest.raises(ValueError, match=r"itm_first_token='\[NOPE\]' is not in the teacher tokenizer"):
        HFTeacher(paths["blip"], device="cpu", itm_first_token="[NOPE]")


def test_each_image_is_encoded_once(teacher, split) -> None:
    scorer = HFPairScorer(teacher, split, batch=50, image_batch=5)
    N, M = split.num_images, split.num_captions
    img = torch.arange(N).repeat_interleave(M)
    cap = torch.arange(M).repeat(N)
    u = scorer(img, cap)
    assert scorer.images_encoded == N and scorer.pairs_scored == N * M and scorer.cached_images == N
    again = scorer(img[:100], cap[:100])
    assert scorer.images_encoded == N and scorer.pairs_scored == N * M + 100
    assert torch.equal(again, u[:100])


def test_bounded_cache_evicts_least_recent_and_keeps_values(teacher, split) -> None:
    img, cap = _pairs(split, 40, seed=2)
    full = HFPairScorer(teacher, split)(img, cap)
    small = HFPairScorer(teacher, split, batch=4, max_cached_images=2, cache_device="cpu")
    assert torch.allclose(small(img, cap), full, atol=1e-6)
    assert small.cached_images == 2 and small.images_encoded > len(set(img.tolist()))
    small(torch.tensor([0, 1]), torch.tensor([0, 0]))
    encoded = small.images_encoded
    small(torch.tensor([1, 0, 1]), torch.tensor([3, 4, 5]))  # both cached: no new encodings
    assert small.images_encoded == encoded


def test_scores_by_global_id_feed_the_store(teacher, split) -> None:
    from workbench.scores.fingerprint import fingerprint_module
    from workbench.scores.store import TeacherScoreStore

    img, cap = _pairs(split, 30, seed=4)
    expected = HFPairScorer(teacher, split)(img, cap)
    scorer = HFPairScorer(teacher, split)
    fingerprint = fingerprint_module(teacher.model, teacher.config_for_fingerprint())
    with TeacherScoreStore(":memory:", fingerprint, "flickr30k") as store:
        logits, probs = store.get_or_compute(split.image_ids[img], split.caption_ids[cap], scorer.by_ids)
        scored = scorer.pairs_scored
        again, _ = store.get_or_compute(split.image_ids[img], split.caption_ids[cap], scorer.by_ids)
    assert torch.allclose(logits, expected, atol=1e-6) and torch.allclose(probs, torch.sigmoid(expected), atol=1e-6)
    assert scored == len(set(zip(img.tolist(), cap.tolist(), strict=True))) and scorer.pairs_scored == scored
    assert torch.equal(again, logits)


def test_teacher_fingerprint_config(teacher) -> None:
    config = teacher.config_for_fingerprint()
    assert config["model"] == "blip" and config["class"] == "BlipForImageTextRetrieval"
    assert config["dtype"] == "float32" and config["score"] == "itm_log_odds"
    assert config["image_size"] == {"height": 32, "width": 32}
    import json

    json.dumps(config)  # the store's fingerprint needs it JSON-serialisable


# --- students ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["clip", "blip_itc"])
def student(request, paths) -> HFStudent:
    folder = paths["clip"] if request.param == "clip" else paths["blip"]
    return HFStudent(folder, request.param, device="cpu")


def test_student_shapes_norms_and_scale(student, split) -> None:
    pixels = student.prepare_images(split.load_images(range(4)))
    tokens = student.prepare_texts(split.texts[:6])
    img, txt = student.encode_image(pixels), student.encode_text(**tokens)
    assert img.shape == (4, 16) and txt.shape == (6, 16)
    assert torch.allclose(img.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(6), atol=1e-5)
    expected_scale = torch.tensor(2.6592).exp()  # both configs' logit_scale_init_value: 1 / 0.07
    assert torch.allclose(student.logit_scale.detach(), expected_scale, rtol=1e-4)
    same_img, same_txt = student(pixels, **tokens)
    assert torch.equal(same_img, img) and torch.equal(same_txt, txt)
    assert student.max_text_length == (32 if student.kind == "clip" else 35)


def test_student_matches_the_models_own_similarity(student, split) -> None:
    student.eval()
    images, texts = split.load_images(range(3)), split.texts[:5]
    inputs = student.processor(images=images, text=texts, return_tensors="pt", padding=True)
    inputs.pop("token_type_ids", None)
    with torch.no_grad():
        img = student.encode_image(inputs["pixel_values"])
        txt = student.encode_text(inputs["input_ids"], inputs["attention_mask"])
        if student.kind == "clip":
            out = student.model(**inputs)
            assert torch.allclose(img, out.image_embeds, atol=1e-5) and torch.allclose(txt, out.text_embeds, atol=1e-5)
        else:  # the model's ITC path scores aligned batches: image_feat @ text_feat.T
            sim = student.model(**{k: v[:3] for k, v in inputs.items()}, use_itm_head=False).itm_score
            assert torch.allclose(img @ txt[:3].T, sim, atol=1e-5)
    student.train()


def test_student_gradients_reach_every_trainable_parameter(student, split) -> None:
    student.train()
    student.zero_grad(set_to_none=True)
    img = student.encode_image(student.prepare_images(split.load_images(range(4))))
    txt = student.encode_text(**student.prepare_texts([split.texts[5 * i] for i in range(4)]))
    logits = student.logit_scale * img @ txt.T
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    loss.backward()
    trainable = student.trainable_parameters()
    assert trainable and all(p.grad is not None for p in trainable)
    frozen = [n for n, p in student.named_parameters() if not p.requires_grad]
    if student.kind == "clip":
        assert frozen == []
    else:  # the ITC path never uses the ITM head or cross-attention
        assert frozen and all("itm_head" in n or "crossattention" in n for n in frozen)
        assert student.temp.grad is not None
    student.zero_grad(set_to_none=True)


def test_student_config_dict(student) -> None:
    config = student.config_dict()
    assert config["kind"] == student.kind and config["dtype"] == "float32"


# --- errors -----------------------------------------------------------------------------------------------------


def test_bad_paths_and_kinds(paths, tmp_path, offline) -> None:
    with pytest.raises(FileNotFoundError, match="looks like a local path"):
        HFTeacher(tmp_path / "missing", device="cpu")
    with pytest.raises(OSError, match=r"cannot load the teacher model from local folder .*"):
        HFTeacher(tmp_path, device="cpu")  # exists, but holds no checkpoint
    with pytest.raises(OSError, match="HF_HUB_OFFLINE is set"):
        HFStudent("no-such-org/no-such-model", "clip", device="cpu")
    with pytest.raises(ValueError, match=r"kind must be one of \['clip', 'blip_itc'\], got 'siglip'"):
        HFStudent(paths["clip"], "siglip", device="cpu")
    with pytest.raises(ValueError, match="is a 'clip' checkpoint; BlipForImageTextRetrieval needs a 'blip' one"):
        HFTeacher(paths["clip"], device="cpu")
    with pytest.raises(ValueError, match="is a 'blip' checkpoint; CLIPModel needs a 'clip' one"):
        HFStudent(paths["blip"], "clip", device="cpu")
    with pytest.raises(ValueError, match="dtype must be one of"):
        HFTeacher(paths["blip"], device="cpu", dtype="int8")
    with pytest.raises(ValueError, match="max_text_length must be <= 64"):
        HFTeacher(paths["blip"], device="cpu", max_text_length=100)


def test_bad_inputs(teacher, split, paths, tmp_path) -> None:
    with pytest.raises(ValueError, match="texts must be a non-empty list of strings"):
        teacher.prepare_texts("a red cube")
    with pytest.raises(ValueError, match="images must be a non-empty list"):
        teacher.prepare_images([])
    scorer = HFPairScorer(teacher, split)
    with pytest.raises(IndexError, match=r"img must hold indices in \[0, 12\)"):
        scorer(torch.tensor([12]), torch.tensor([0]))
    with pytest.raises(ValueError, match="cap must have shape"):
        scorer(torch.tensor([0, 1]), torch.tensor([0]))
    with pytest.raises(TypeError, match="split must be a KarpathySplit"):
        HFPairScorer(teacher, split.texts)
    with pytest.raises(ValueError, match="same number of pairs"):
        teacher.itm(torch.zeros(2, 17, 32), torch.zeros(3, 4, dtype=torch.long), torch.ones(3, 4, dtype=torch.long))


def test_missing_image_at_scoring_time(teacher, tmp_path) -> None:
    json_path = write_tiny_karpathy(tmp_path, n_images=10)
    split = load_karpathy(json_path, tmp_path / "images", "test")
    split.image_paths[1].unlink()
    scorer = HFPairScorer(teacher, split)
    with pytest.raises(FileNotFoundError, match=r"1009\.jpg \(imgid 9\)"):
        scorer(torch.tensor([0, 1]), torch.tensor([0, 0]))


# --- retrieval end to end ---------------------------------------------------------------------------------------


def test_retrieval_and_teacher_reranking_end_to_end(paths, teacher, split) -> None:
    student = HFStudent(paths["clip"], "clip", device="cpu")
    image_emb, text_emb = encode_split(student, split, batch=5)
    assert image_emb.shape == (12, 16) and text_emb.shape == (60, 16) and student.training
    relations = split.relations()
    plain = retrieval_metrics(image_emb, text_emb, relations, ks=(1, 5), scale=student.logit_scale)
    assert set(plain) == {"coco"} and set(plain["coco"]) == {"r1_i2t", "r5_i2t", "r1_t2i", "r5_t2i", "rsum"}
    scorer = HFPairScorer(teacher, split, batch=16)
    k_test = 6
    out = rerank_metrics(image_emb, text_emb, relations, scorer, k_test=k_test, ks=(1, 5), progress=False,
                         scale=student.logit_scale, fusion="itm+itc")
    assert set(out) == {"coco", "teacher_pairs"}
    assert all(0.0 <= v <= 100.0 for k, v in out["coco"].items() if k != "rsum")
    assert 0 < out["teacher_pairs"] <= (12 + 60) * k_test
    assert scorer.pairs_scored == out["teacher_pairs"]
    assert scorer.images_encoded == scorer.cached_images <= 12


def test_resolve_dtype() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype(None, cpu, low_precision_on_gpu=True) == torch.float32
    assert resolve_dtype(None, cuda, low_precision_on_gpu=False) == torch.float32
    assert resolve_dtype("bf16", cpu, low_precision_on_gpu=False) == torch.bfloat16
    assert resolve_dtype(torch.float16, cpu, low_precision_on_gpu=False) == torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype(torch.int8, cpu, low_precision_on_gpu=False)


# --- GPU (skipped without CUDA) ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_teacher_on_gpu_runs_in_low_precision_close_to_fp32(paths, teacher, split) -> None:
    gpu = HFTeacher(paths["blip"], device="cuda")
    assert gpu.dtype in (torch.bfloat16, torch.float16) and next(gpu.model.parameters()).is_cuda
    img, cap = _pairs(split, 32, seed=3)
    u_gpu = HFPairScorer(gpu, split)(img, cap)
    u_cpu = HFPairScorer(teacher, split)(img, cap)
    assert u_gpu.dtype == torch.float32 and torch.allclose(u_gpu, u_cpu, atol=0.1)
    student = HFStudent(paths["clip"], "clip", device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        image_emb, text_emb = encode_split(student, split)
    assert image_emb.is_cuda and torch.isfinite(image_emb).all() and torch.isfinite(text_emb).all()
