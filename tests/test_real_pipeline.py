"""The real-data pipeline offline: tiny BLIP teacher + tiny CLIP student + a generated 20-image Karpathy dataset,
through the CLI (mine -> teacher store -> CPRD training -> evaluation), the shared trainer interface, the protocol
card and teacher cost, and data parallelism across processes (gloo on CPU) against single-process oracles."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from dist_workers import both_worker, primitives_worker, run_ranks, train_steps_worker
from hf_fixtures import save_tiny_blip, save_tiny_clip, write_tiny_karpathy

from workbench.cli import main
from workbench.data.karpathy import load_karpathy
from workbench.data.world import build_world
from workbench.distributed import SINGLE, Dist
from workbench.evaluation.protocol import TeacherCost, protocol_card, training_cost, usable_ks
from workbench.experiments import WORLD_PRESETS
from workbench.models.hf import CaptionTokens, HFPairScorer, HFStudent, HFTeacher
from workbench.models.student import StudentConfig
from workbench.scores.store import TeacherScoreStore
from workbench.scores.teacher_scores import TeacherScores, teacher_fingerprint
from workbench.training.config import FitConfig, LossTerm
from workbench.training.loop import check_world

SMALL = StudentConfig(dim=32, embed_dim=32, heads=2, mlp=64, image_layers=1, text_layers=1, max_words=24)



@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        root = tmp_path_factory.mktemp("real")
        json_path = write_tiny_karpathy(root / "data", n_images=20)
        yield {"root": root, "json": json_path, "images": root / "data" / "images",
               "blip": save_tiny_blip(root / "blip"), "blip2": save_tiny_blip(root / "blip2", seed=1),
               "clip": save_tiny_clip(root / "clip")}


@pytest.fixture(scope="module")
def train_split(paths):
    return load_karpathy(paths["json"], paths["images"], "train")  # 12 images, 60 captions


@pytest.fixture(scope="module")
def teacher(paths) -> HFTeacher:
    return HFTeacher(paths["blip"], device="cpu")


@pytest.fixture(scope="module")
def student(paths) -> HFStudent:
    return HFStudent(paths["clip"], "clip", device="cpu")


def _data_args(paths, store: Path) -> list[str]:
    return ["--dataset", "flickr30k", "--karpathy-json", str(paths["json"]), "--image-root", str(paths["images"]),
            "--teacher", str(paths["blip"]), "--store", str(store)]


# --- the pipeline through the CLI -------------------------------------------------------------------------------


def test_cli_mines_scores_trains_and_evaluates(paths, teacher, capsys) -> None:
    store, run = paths["root"] / "cli" / "scores.sqlite", paths["root"] / "cli" / "run"
    data = _data_args(paths, store)

    # 1. mine with the untrained student, fill the store; the announced cost is exact
    assert main(["teacher-scores", *data, "--student", str(paths["clip"]), "--top", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    cost = re.search(r"store fill: i2t 12 queries x 4 \+ t2i 60 queries x 4 = 288 pairs \((\d+) distinct\); "
                     r"0 already in the store -> (\d+) teacher pair scores", out)
    assert cost and cost.group(1) == cost.group(2)
    fingerprint = teacher_fingerprint(teacher)
    with TeacherScoreStore(store, fingerprint, "karpathy-flickr30k") as opened:
        assert len(opened) == int(cost.group(1))

    # 2. two CPRD steps: card and training cost first, finite losses, a run folder
    assert main(["train", *data, "--student", str(paths["clip"]), "--loss", "itc", "--loss",
                 "cprd:validity=top,m=2", "--steps", "2", "--batch", "6", "--k", "3", "--eval-every", "1",
                 "--device", "cpu", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "protocol   flickr30k test: 4 images, 20 captions (5 per image)" in out
    assert "top k_test = 4 per query (asked 128; clamped to the gallery size); fusion itm" in out
    assert "teacher    training: i2t 12 queries x 4 + t2i 12 queries x 4 = 96 pairs at most" in out
    assert out.index("protocol") < out.index("teacher    training") < out.index("retrieval coco")
    history = json.loads((run / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2]
    assert all(math.isfinite(r[k]) for r in history for k in ("itc_loss", "cprd_loss", "val_coco_rsum"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"]["k_test"] == 4 and metrics["protocol"]["dataset"] == "flickr30k"
    assert metrics["teacher_store"]["hits"] > 0  # mined pairs the store already held
    assert set(metrics["rerank"]["coco"]) == {"r1_i2t", "r1_t2i", "rsum"}
    config = json.loads((run / "config.json").read_text())
    assert config["fit"]["positives"] == "coco" and config["data"]["student"] == str(paths["clip"])

    # 3. re-evaluate from the run folder alone, fused as LAVIS: every re-ranking pair is already stored
    assert main(["eval", "--checkpoint", str(run), "--fusion", "itm+itc",  # the store: the run's
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"re-ranking: i2t 4 queries x 4 \+ t2i 20 queries x 4 = 96 pairs \(\d+ distinct\); "
                     r"(\d+) already in the store -> 0 teacher pair scores", out)
    again = json.loads((run / "eval_test.json").read_text())
    assert again["protocol"]["fusion"] == "itm+itc" and again["rerank_store"]["computed_pairs"] == 0
    assert json.loads((run / "metrics.json").read_text()) == metrics  # the run's own metrics are left alone
    assert again["retrieval"] == metrics["retrieval"]  # the checkpoint reloads the trained student exactly


def test_cli_real_data_errors(paths, capsys) -> None:
    store = paths["root"] / "errors.sqlite"
    assert main(["train", "--dataset", "flickr30k", "--out", str(paths["root"] / "x")]) == 2
    assert "needs --karpathy-json PATH and --image-root PATH" in capsys.readouterr().err
    args = [*_data_args(paths, store), "--student", str(paths["clip"]), "--steps", "1", "--batch", "4", "--k", "2",
            "--device", "cpu", "--out", str(paths["root"] / "x")]
    assert main(["train", *args, "--positives", "semantic"]) == 2
    assert "positives='semantic' is not a protocol of this dataset; choose one of ['coco']" in capsys.readouterr().err
    assert main(["train", *args, "--near-misses", "true"]) == 2
    assert "near_misses=True needs the built-in world" in capsys.readouterr().err
    assert main(["train", *["coco" if a == "flickr30k" else a for a in args]]) == 2
    assert "dataset='coco' was given but" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(paths["root"] / "x"), "--fusion", "itm+itc"]) == 2


def test_real_runs_check_teacher_and_images_before_training(paths, capsys, tmp_path, monkeypatch) -> None:
    """A missing teacher (needed only to re-rank after an ITC run) and a damaged test image are found before the
    first step, named in one line; nothing trains."""
    import workbench.experiments.runs as runs

    calls = []
    monkeypatch.setattr(runs, "fit", lambda *args, **kwargs: calls.append(args))
    data = tmp_path / "data"
    shutil.copytree(paths["json"].parent, data)
    victim = load_karpathy(data / paths["json"].name, data / "images", "test").image_paths[1]
    base = ["train", "--dataset", "flickr30k", "--karpathy-json", str(data / paths["json"].name), "--image-root",
            str(data / "images"), "--student", str(paths["clip"]), "--store", str(tmp_path / "s.sqlite"), "--steps",
            "1", "--batch", "4", "--device", "cpu"]
    assert main([*base, "--teacher", str(tmp_path / "no-blip"), "--out", str(tmp_path / "a")]) == 2
    assert "teacher model" in capsys.readouterr().err
    victim.write_bytes(victim.read_bytes()[:300])  # truncated: the header still parses, the pixels do not
    assert main([*base, "--teacher", str(paths["blip"]), "--check-images", "full", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "1 of 4 image(s) of split 'test' cannot be read" in err and str(victim) in err
    victim.write_bytes(b"not an image")
    assert main([*base, "--teacher", str(paths["blip"]), "--out", str(tmp_path / "c")]) == 2
    assert str(victim) in capsys.readouterr().err
    assert calls == [] and not any((tmp_path / name).exists() for name in "abc")


# --- the shared interface ---------------------------------------------------------------------------------------


def test_student_reads_a_split_as_its_processor_does(student, train_split) -> None:
    idx = torch.tensor([3, 0, 7, 3])
    texts = [train_split.texts[i] for i in idx.tolist()]
    with torch.no_grad():
        expected = student.encode_text(**student.prepare_texts(texts))
        got = student.encode_texts(train_split, idx, torch.device("cpu"))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        images = student.encode_image(student.prepare_images(train_split.load_images([5, 1])))
        torch.testing.assert_close(student.encode_images(train_split, torch.tensor([5, 1]), "cpu"), images)
        order = torch.tensor([9, 2, 11, 0, 5, 7, 1])  # opened by 4 threads in chunks, returned in order
        one_by_one = HFStudent(student.name_or_path, "clip", device="cpu", image_workers=1)
        torch.testing.assert_close(student.encode_images(train_split, order),
                                   one_by_one.encode_images(train_split, order))
    assert student.caption_tokens(train_split) is student.caption_tokens(train_split)  # tokenised once per split
    assert student.embed_dim == 16 and student.device.type == "cpu"


@pytest.mark.parametrize("which", ["clip", "blip"])
def test_caption_tokens_equal_the_tokenizer_padding(which, student, teacher, train_split) -> None:
    owner = student if which == "clip" else teacher
    tokens = CaptionTokens(owner.processor.tokenizer, train_split.texts, 6)  # short: truncation matters
    idx = [4, 9, 4, 0, 33]
    ids, mask = tokens.batch(idx)
    ref = owner.processor.tokenizer([train_split.texts[i] for i in idx], padding="longest", truncation=True,
                                    max_length=6, return_tensors="pt")
    assert torch.equal(ids, ref["input_ids"]) and torch.equal(mask, ref["attention_mask"].long())
    tokens.tokenizer = counting = _Counting(owner.processor.tokenizer)
    tokens.batch([4, 9, 10])
    assert counting.calls == [[train_split.texts[10]]]  # only the caption not seen before


class _Counting:
    """A tokenizer that records what it is asked to tokenise."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, []

    def __call__(self, texts, **kwargs):
        self.calls.append(texts)
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


def test_teacher_scores_with_the_blip_teacher(paths, teacher, train_split, tmp_path) -> None:
    scores = TeacherScores(teacher, train_split, tmp_path / "s.sqlite", "karpathy-flickr30k", batch=5)
    assert isinstance(scores.scorer, HFPairScorer) and scores.scorer.batch == 5
    img, cap = torch.tensor([0, 1, 2, 0]), torch.tensor([5, 0, 17, 5])
    logits, probs = scores(img, cap)
    direct = HFPairScorer(teacher, train_split)(img, cap)
    torch.testing.assert_close(logits, direct)
    torch.testing.assert_close(probs, torch.sigmoid(direct))
    assert scores.stats.computed_pairs == 3 and scores.stored(img, cap).all()
    scores(img, cap)
    assert scores.stats.computed_pairs == 3  # the second call is served by the store
    other = HFTeacher(paths["blip2"], device="cpu")
    assert teacher_fingerprint(other) != teacher_fingerprint(teacher)
    assert teacher_fingerprint(HFTeacher(paths["blip"], device="cpu")) == teacher_fingerprint(teacher)
    scores.close()


def test_checks_of_the_training_split(train_split) -> None:
    class Data:
        train = train_split

    check_world(FitConfig(positives="coco", batch=4, k=2), Data())
    with pytest.raises(ValueError, match=r"positives='semantic' is not a protocol"):
        check_world(FitConfig(batch=4, k=2), Data())
    with pytest.raises(ValueError, match="near_misses=True needs the built-in world"):
        check_world(FitConfig(positives="coco", near_misses=True, batch=4, k=2), Data())
    with pytest.raises(ValueError, match=r"global batch batch x processes = 8 x 2 exceeds the 12 training images"):
        check_world(FitConfig(positives="coco", batch=8, k=2), Data(), Dist(0, 2))


# --- protocol card and teacher cost -----------------------------------------------------------------------------


def test_protocol_card(paths) -> None:
    test = load_karpathy(paths["json"], paths["images"], "test")

    class Big:  # a split of the standard size, for the defaults
        name, num_images, num_captions, captions_per_image = "test", 5000, 25000, 5

        @staticmethod
        def relations():
            return {"coco": None}

    card = protocol_card("coco", Big())
    assert (card.k_test, card.ks, card.fusion) == (256, (1, 5, 10), "itm")
    assert protocol_card("flickr30k", Big(), fusion="itm+itc").k_test == 128
    text = card.text()
    assert "coco test: 5000 images, 25000 captions (5 per image)" in text and "R@1/5/10" in text
    assert "k_test = 256 per query; fusion itm" in text and "RSUM = sum of the 6 recalls" in text
    tiny = protocol_card("flickr30k", test)  # the default k_test (128) is clamped to a tiny gallery, with a note
    assert (tiny.k_test, tiny.k_test_requested, tiny.ks) == (4, 128, (1,))
    with pytest.raises(ValueError, match="k_test must be <= 4, got 100"):  # an explicit k_test is never clamped
        protocol_card("flickr30k", test, k_test=100)
    assert "clamped to the gallery size" in tiny.text() and "recalls are reported at K = (1,)" in tiny.text()
    assert protocol_card("coco", Big(), rerank=False).k_test is None
    assert usable_ks((1, 5, 10), 7) == (1, 5) and usable_ks((5, 10), 3) == (3,)
    with pytest.raises(ValueError, match="fusion"):
        protocol_card("coco", Big(), fusion="itc")


def test_teacher_cost_arithmetic() -> None:
    cost = training_cost(steps=10, batch=32, processes=2, k=8, negatives="hard", store_rows=123)
    assert cost.terms == (("i2t", 640, 9), ("t2i", 640, 9)) and cost.pairs == 2 * 640 * 9 == cost.to_compute
    assert "= 11,520 pairs at most" in cost.text() and "holds 123 scores" in cost.text()
    assert training_cost(1, 16, 1, 4, "all").terms[0] == ("i2t", 16, 16)
    exact = TeacherCost("re-ranking", (("i2t", 1000, 128), ("t2i", 5000, 128)), distinct=700_000, stored=100_000,
                        exact=True)
    assert exact.pairs == 768_000 and exact.to_compute == 600_000
    assert "768,000 pairs (700,000 distinct); 100,000 already in the store -> 600,000" in exact.text()
    assert TeacherCost("training", ()).text().endswith("none (no distillation term)")


# --- data parallelism -------------------------------------------------------------------------------------------


def test_one_process_is_the_identity() -> None:
    x = torch.randn(5, 3, requires_grad=True)
    assert SINGLE.gather(x) is x and SINGLE.gather_rows(x) is x and SINGLE.local(x) is x
    assert SINGLE.shard(9) == range(9) and SINGLE.mean_values({"a": 1.5}) == {"a": 1.5}
    assert not SINGLE.enabled and SINGLE.is_main


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shards_partition_the_rows(world_size) -> None:
    for n in range(0, 30):
        shards = [Dist(r, world_size).shard(n) for r in range(world_size)]
        assert [i for s in shards for i in s] == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.fixture(scope="module")
def world():
    return build_world(replace(WORLD_PRESETS["smoke"], n_train=120, n_test=40))


TERMS = (LossTerm("itc"), LossTerm("cprd", 1.0, {"validity": "top", "m": 2}), LossTerm("listmle", 0.5))
CONFIGS = [FitConfig(losses=TERMS, batch=8, k=4, steps=10, warmup=1, lr=1e-3, positives="coco"),
           FitConfig(losses=TERMS[:2], batch=8, k=4, steps=10, warmup=1, lr=1e-3, pool="queue", queue_size=24)]


@pytest.fixture(scope="module")
def two_ranks(world) -> tuple[torch.Tensor, list[dict]]:
    """Both workers on 2 gloo processes (one launch); the global embeddings the primitives worker slices."""
    torch.manual_seed(3)
    x_global = torch.nn.functional.normalize(torch.randn(8, 6), dim=-1)
    return x_global, run_ranks(both_worker, 2, x_global, world, CONFIGS, 3, SMALL)


def test_two_processes_primitives_against_one(world, two_ranks) -> None:
    """gather (with gradient, through ITC), uneven gathers, shards, averaging, broadcast, sharded evaluation."""
    x_global, ranks = two_ranks[0], [r["primitives"] for r in two_ranks[1]]
    one = primitives_worker(SINGLE, x_global, world, SMALL)
    # the value of the gathered ITC is the single-process ITC on the global batch; gradients sum over the ranks
    # (each rank's loss is a mean over its queries, so the global loss is the mean of the ranks' losses)
    assert math.isclose(sum(r["itc"] for r in ranks) / 2, one["itc"], rel_tol=1e-6)
    for k in (0, 1):
        grad = torch.cat([r["itc_grad"][k] for r in ranks]) / 2
        torch.testing.assert_close(grad, one["itc_grad"][k], rtol=1e-5, atol=1e-7)
    assert all(torch.equal(r["gathered"], x_global) for r in ranks)
    assert all(torch.equal(r["rows"], torch.tensor([0, 0, 1, 2, 3])) for r in ranks)
    assert [r["shard"] for r in ranks] == [range(0, 4), range(4, 7)]
    assert all(r["mean"] == {"a": 0.5, "b": 2.0} for r in ranks)
    for name, p in ranks[0]["broadcast"].items():
        assert torch.equal(ranks[1]["broadcast"][name], p)
    assert ranks[1]["averaged"] and ranks[1]["averaged"].keys() == ranks[0]["averaged"].keys()
    assert all(torch.equal(g, torch.full_like(g, 1.5)) for r in ranks for g in r["averaged"].values())
    for r in ranks:  # sharded embedding == embedding the whole split in one process (same weights: rank 0's seed)
        for k in (0, 1):
            torch.testing.assert_close(r["embeddings"][k], one["embeddings"][k])
    assert all(torch.equal(r["scores"], one["scores"]) for r in ranks)


def test_two_processes_train_like_one_process_on_the_global_batch(world, two_ranks) -> None:
    """The trainer across 2 processes (per-rank batch 8) takes the steps one process takes with batch 16: same
    losses at every step, same (averaged) gradients, and both ranks hold identical weights.

    Weights after several steps are compared through the losses they give: AdamW divides each gradient by its
    magnitude, so a component that is zero in exact arithmetic (e.g. attention key biases) but rounding noise in
    float32 moves by about +-lr in both runs, in directions that depend on the rounding."""
    ranks = [r["train"] for r in two_ranks[1]]
    singles = train_steps_worker(SINGLE, world, [c.with_(batch=16) for c in CONFIGS], 3, SMALL)
    for c, one in enumerate(singles):
        two = [r[c] for r in ranks]
        assert two[0]["rows"] == two[1]["rows"]  # logged values are means over the ranks
        for got, want in zip(two[0]["rows"], one["rows"], strict=True):
            assert all(math.isfinite(v) for v in got.values())
            for key, value in want.items():
                assert math.isclose(got[key], value, rel_tol=1e-4, abs_tol=1e-5), (c, key, got[key], value)
        for name in one["params"]:
            assert torch.equal(two[0]["params"][name], two[1]["params"][name])  # ranks stay in lockstep
        assert one["grads"].keys() == two[0]["grads"].keys()
        for name, g in one["grads"].items():
            torch.testing.assert_close(two[0]["grads"][name], g, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_accelerate_launch_two_processes_through_the_cli(paths, tmp_path) -> None:
    """`accelerate launch` on 2 CPU processes: train (ITC + CPRD) on the tiny real dataset, the shared store."""
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if launcher is None:
        pytest.skip("the accelerate launcher is not installed")
    run, store = tmp_path / "run", tmp_path / "scores.sqlite"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(_port()), "-m", "workbench", "train",
           *_data_args(paths, store), "--student", str(paths["clip"]), "--loss", "itc", "--loss", "cprd",
           "--steps", "2", "--batch", "4", "--k", "2", "--device", "cpu", "--out", str(run)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("protocol   flickr30k test") == 1  # printed by the main process only
    assert "teacher    training: i2t 16 queries x 3" in done.stdout  # global batch 2 x 4, 2 steps
    config = json.loads((run / "config.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert config["processes"] == 2 and all(math.isfinite(r["cprd_loss"]) for r in history)
    assert (run / "checkpoint" / "model.safetensors").is_file()


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
