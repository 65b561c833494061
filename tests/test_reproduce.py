"""``reproduce`` end to end at tiny size: every file written, figures non-empty, findings.json valid strict JSON,
everything under ``out`` and nothing in the repository."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from workbench.experiments.plan import PROFILES, jobs, with_seeds
from workbench.experiments.reproduce import reproduce

REPO = Path(__file__).resolve().parents[1]


def repo_status() -> str:
    """``git status`` of the checkout's figures, package and docs (empty outside a git checkout)."""
    proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "figures",
                           "workbench", "docs"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


@pytest.mark.slow
def test_reproduce_smoke_end_to_end(tmp_path, monkeypatch):
    out = tmp_path / "rep"
    # the smoke profile's settings under another name: no profile writes outside out (the quick one used to
    # copy every figure into the repository's figures/)
    monkeypatch.setitem(PROFILES, "tiny", PROFILES["smoke"])
    before, open_figures = repo_status(), set(plt.get_fignums())
    groups = ("headline", "intervention", "room", "validity")
    findings = reproduce("tiny", out, groups=groups, workers=2, log=lambda *_: None)
    assert repo_status() == before
    assert set(plt.get_fignums()) <= open_figures  # every figure it drew was saved and closed
    data = json.loads((out / "findings.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    for method in ("itc", "kl", "mse", "ranknet", "listnet", "listmle", "cprd", "teacher_rerank"):
        for key in ("retrieval", "retrieval_coco"):
            assert {"mean", "std"} <= data[key][method]["rsum"].keys()
            assert {"r1_i2t", "r1_t2i"} <= data[key][method].keys()
    assert set(data["verdicts"]) == {"finding1", "finding2", "finding3"}
    verdicts = {"reproduced", "not reproduced", "inconclusive", "untestable"}
    assert all(v["verdict"] in verdicts and v["reason"] for v in data["verdicts"].values())
    # the protocol's analyses: paired by seed, per-seed values kept, the intervention and the shared slates
    assert data["paired"]["semantic"]["cprd"]["n"] == 2 and len(data["per_seed_rsum"]["semantic"]["itc"]) == 2
    assert {"hard/teacher", "hard/random", "hard/truth", "easy/teacher", "easy/random"} <= set(
        data["finding2"]["intervention"]["arms"])
    assert {"cprd", "listmle", "kl", "itc"} <= set(data["finding3"]["shared_slates"]["stats"])
    assert data["room"] is not None and "oracle" in data["per_seed_rsum"]["semantic"]
    for f in ("finding1", "finding2", "finding3"):
        assert data[f]
    report = (out / "report.md").read_text()
    for heading in ("## Finding 1", "## Finding 2", "## Finding 3", "## Headline"):
        assert heading in report
    links = [link for link in re.findall(r"!\[[^]]*\]\(([^)]*)\)", report) if link]  # "": a figure not drawn
    assert len(links) >= 5 and all((out / link).resolve().is_file() and (out / link).resolve().is_relative_to(out)
                                   for link in links), links
    for name in ("finding1_histograms", "finding1_qq", "finding2_tau", "headline_rsum", "world_examples"):
        for ext in ("png", "svg"):
            assert (out / "figures" / f"{name}.{ext}").stat().st_size > 1000
    assert findings["headline"]["available"]

    again = reproduce("tiny", out, groups=groups, workers=2, log=lambda *_: None)
    assert again["retrieval"] == findings["retrieval"]  # finished runs are reused, not retrained
    (out / "runs" / "headline" / "kl_seed1" / "metrics.json").unlink()  # a run stopped before its end
    partial = reproduce("tiny", out, groups=groups, analyse_only=True, log=lambda *_: None)
    assert partial["retrieval"]["kl"]["rsum"]["values"] == findings["retrieval"]["kl"]["rsum"]["values"][:1]
    assert partial["retrieval"]["cprd"] == findings["retrieval"]["cprd"]
    assert findings["runs"]["not_finished"] == [] and partial["runs"]["not_finished"] == ["kl_seed1"]
    planned = findings["runs"]["planned"]
    assert f"{planned - 1} of the {planned} planned runs finished: not finished `kl_seed1`." in (
        out / "report.md").read_text()
    assert not (out / "runs" / "headline" / "kl_seed1" / "metrics.json").exists()  # analysing trains nothing


def test_the_cli_offers_every_reproduce_profile():
    from workbench.cli import REPRODUCE_PROFILES
    from workbench.experiments.plan import PROFILES

    assert list(PROFILES) == REPRODUCE_PROFILES
    demo = PROFILES["demo"]
    assert demo.groups == ("headline",) and demo.seeds == 3  # make demo: the headline table, 3 seeds


def test_more_seeds_keep_the_finished_runs_and_add_the_new_seeds(tmp_path):
    """``reproduce --seeds 5`` on a finished 3-seed profile: the same run folders and configs for seeds 0-2 (so
    ``finished`` finds them and nothing is retrained), seeds 3 and 4 added for every variant; the report's
    departures follow the seed counts."""
    cpu = PROFILES["cpu"]
    five = with_seeds(cpu, 5)
    old = {j.out_dir: j.cfg for j in jobs(cpu, tmp_path)}
    new = {j.out_dir: j.cfg for j in jobs(five, tmp_path)}
    assert all(new[d] == cfg for d, cfg in old.items())
    added = sorted({int(d.name.rsplit("_seed", 1)[1]) for d in new.keys() - old.keys()})
    assert added == [3, 4] and len(new) == len(old) * 5 // 3
    assert cpu.stated_departures[0] == "3 seeds for every group, not the protocol's 5"
    assert five.stated_departures == cpu.departures  # 5 seeds: no seed departure left
    assert PROFILES["quick"].stated_departures[0] == ("3 seeds for the headline and baselines and 1 for the other "
                                                      "groups, not the protocol's 5")
    assert with_seeds(cpu, None) is cpu
    with pytest.raises(ValueError, match="seeds must be >= 1, got 0"):
        with_seeds(cpu, 0)
