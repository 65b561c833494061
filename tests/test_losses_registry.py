"""The registry: names, hyperparameter validation, plug-in registration, and the README's generated table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pytest
import torch
from test_losses_support import make_batch, random_slates

from workbench.losses import (
    ScoreBatch,
    at_least,
    get_loss,
    in_range,
    list_losses,
    loss_signature,
    loss_spec,
    positive,
    register_loss,
    unregister_loss,
)
from workbench.losses.cprd import VALIDITY_RULES, validity_rule
from workbench.losses.table import END, START, loss_table_markdown, main, replace_table, table_in

README = Path(__file__).resolve().parents[1] / "README.md"
BUILTIN = ["infonce", "kl", "mse", "margin_mse", "ranknet", "listnet", "listmle", "cprd"]


@pytest.fixture
def scratch():
    """Names registered during a test are removed afterwards, so the registry (and README table) stay put."""
    before = set(list_losses())
    yield
    for name in set(list_losses()) - before:
        unregister_loss(name)


def test_builtin_losses_are_registered_with_descriptions():
    losses = list_losses()
    assert list(losses)[: len(BUILTIN)] == BUILTIN
    assert all(isinstance(d, str) and d and "\n" not in d for d in losses.values())


def test_unknown_loss_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown loss 'cpdr'; registered losses: \[.*'cprd'"):
        get_loss("cpdr")


def test_unknown_hyperparameter_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'cprd' got unknown hyperparameter\(s\) \['tau'\]; valid: validity=.*m=4"):
        get_loss("cprd", tau=1.0)
    with pytest.raises(ValueError, match="valid: none"):
        get_loss("infonce", temperature=1.0)


@pytest.mark.parametrize(
    ("name", "kw", "error", "pattern"),
    [
        ("cprd", {"temperature": 0.0}, ValueError, r"cprd: hyperparameter temperature must be > 0.0, got 0.0"),
        ("cprd", {"temperature": -1}, ValueError, "temperature must be > 0"),
        ("cprd", {"temperature": "1"}, TypeError, "temperature must be a number, got str"),
        ("cprd", {"temperature": float("nan")}, ValueError, "temperature must be finite"),
        ("cprd", {"m": 0}, ValueError, "hyperparameter m must be >= 1"),
        ("cprd", {"m": 2.5}, TypeError, "hyperparameter m must be an int, got float"),
        ("cprd", {"m": True}, TypeError, "m must be an int, got bool"),
        ("cprd", {"validity": "hard"}, ValueError, r"validity must be one of \['threshold', 'top', 'all'\]"),
        ("cprd", {"normalize": "rows"}, ValueError, r"normalize must be one of \['none', 'steps'\]"),
        ("cprd", {"threshold": None}, TypeError, "threshold must be float, got None"),
        ("mse", {"standardize": 1}, TypeError, "standardize must be bool, got int 1"),
        ("kl", {"teacher_temperature": 0}, ValueError, "teacher_temperature must be > 0"),
        ("listnet", {"temperature": -2.0}, ValueError, "temperature must be > 0"),
        ("ranknet", {"temperature": 0}, ValueError, "temperature must be > 0"),
    ],
)
def test_bad_hyperparameter_values_raise_at_get_loss(name, kw, error, pattern):
    with pytest.raises(error, match=pattern):
        get_loss(name, **kw)


def test_loss_object_records_name_and_all_hyperparameters():
    loss = get_loss("cprd", validity="top", temperature=2)
    assert loss.name == "cprd"
    assert loss.hparams == {"validity": "top", "threshold": 0.5, "m": 4, "temperature": 2.0, "normalize": "steps"}
    assert isinstance(loss.hparams["temperature"], float)  # ints widened for float hyperparameters
    assert repr(loss) == "cprd(validity='top', threshold=0.5, m=4, temperature=2.0, normalize='steps')"
    assert loss == get_loss("cprd", validity="top", temperature=2.0) != get_loss("cprd")
    assert len({loss, get_loss("cprd", validity="top", temperature=2.0)}) == 1


def test_loss_signature():
    assert loss_signature("cprd") == {"validity": "threshold", "threshold": 0.5, "m": 4, "temperature": 1.0,
                                      "normalize": "steps"}
    assert loss_signature("kl") == {"teacher_temperature": 1.0, "student_temperature": 1.0}
    assert loss_signature("infonce") == {}
    params = loss_spec("cprd").params
    assert params["m"].kind is int and params["normalize"].choices == ("none", "steps")
    assert params["temperature"].describe() == "temperature=1.0 (> 0)"


def test_a_loss_registered_here_is_usable_at_once(scratch):
    @register_loss("shifted_cprd", checks={"shift": in_range(-1, 1)})
    def shifted_cprd(batch: ScoreBatch, *, shift: float = 0.0, mode: Literal["a", "b"] = "a", k: int | None = None):
        """CPRD on shifted student scores (a test plug-in)."""
        moved = ScoreBatch(student=batch.student + shift, positive=batch.positive, teacher=batch.teacher,
                           mask=batch.mask)
        return get_loss("cprd")(moved)

    assert list_losses()["shifted_cprd"] == "CPRD on shifted student scores (a test plug-in)."
    assert loss_signature("shifted_cprd") == {"shift": 0.0, "mode": "a", "k": None}
    batch = make_batch(random_slates(0), grad=False)
    torch.testing.assert_close(get_loss("shifted_cprd", shift=0.5)(batch)["distill_loss"],
                               get_loss("cprd")(batch)["distill_loss"])  # CPRD is shift-invariant per row
    assert get_loss("shifted_cprd", k=3).hparams["k"] == 3
    with pytest.raises(ValueError, match="shift must be <= 1"):
        get_loss("shifted_cprd", shift=2.0)
    with pytest.raises(ValueError, match=r"mode must be one of \['a', 'b'\]"):
        get_loss("shifted_cprd", mode="c")
    assert "shifted_cprd" in loss_table_markdown()


def _define(doc: str):
    """A fresh function object with the same module and qualified name each call (what %autoreload makes)."""

    def variant(batch: ScoreBatch, *, temperature: float = 1.0) -> dict[str, torch.Tensor]:
        return {"distill_loss": batch.student.sum() * 0}

    variant.__doc__ = doc
    return variant


def test_reregistering_the_same_function_replaces_it(scratch):
    register_loss("variant_x", checks={"temperature": positive()})(_define("First version."))
    register_loss("variant_x", checks={"temperature": positive()})(_define("Edited version."))
    assert list_losses()["variant_x"] == "Edited version."


def test_a_different_function_under_a_taken_name_raises(scratch):
    def cprd(batch: ScoreBatch) -> dict[str, torch.Tensor]:
        """An impostor."""
        return {"distill_loss": batch.student.sum()}

    with pytest.raises(ValueError, match="loss name 'cprd' is taken by workbench.losses.cprd.cprd"):
        register_loss("cprd")(cprd)
    assert loss_spec("cprd").fn.__module__ == "workbench.losses.cprd"


def test_bad_registrations_raise(scratch):
    def no_doc(batch, *, t: float = 1.0):
        return {}

    def positional(batch, t=1.0):
        """Doc."""

    def no_default(batch, *, t: float):
        """Doc."""

    def bad_default(batch, *, t: float = -1.0):
        """Doc."""

    with pytest.raises(ValueError, match="needs a docstring"):
        register_loss("x1")(no_doc)
    with pytest.raises(TypeError, match="keyword-only with defaults .* got 't'"):
        register_loss("x2")(positional)
    with pytest.raises(TypeError, match="keyword-only with defaults"):
        register_loss("x3")(no_default)
    with pytest.raises(ValueError, match="x4: hyperparameter t must be >= 0"):
        register_loss("x4", checks={"t": at_least(0)})(bad_default)
    with pytest.raises(TypeError, match=r"checks name unknown hyperparameter\(s\) \['tau'\]"):
        register_loss("x5", checks={"tau": positive()})(bad_default)
    with pytest.raises(ValueError, match="must be a Python identifier"):
        register_loss("cprd:top")
    with pytest.raises(ValueError, match="entries must be one of"):
        register_loss("x6", entries="positives")
    assert not {"x1", "x2", "x3", "x4", "x5", "x6"} & set(list_losses())


@pytest.mark.parametrize(
    ("result", "pattern"),
    [
        (torch.tensor(1.0), "must return a non-empty dict"),
        ({}, "must return a non-empty dict"),
        ({"distill": torch.tensor(1.0)}, "at least one must end in '_loss'"),
        ({"distill_loss": torch.ones(3)}, r"'distill_loss' = \(3,\); expected a scalar tensor"),
        ({"distill_loss": 1.0}, "expected a scalar tensor"),
    ],
)
def test_loss_output_is_checked(scratch, result, pattern):
    @register_loss("bad_output", needs_teacher=False)
    def bad_output(batch: ScoreBatch) -> dict[str, torch.Tensor]:
        """Returns whatever the test says."""
        return result

    with pytest.raises(TypeError, match=pattern):
        get_loss("bad_output")(make_batch(random_slates(0)))


def test_unregister_unknown_raises():
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        unregister_loss("nope")


def test_a_new_validity_rule_is_accepted_by_cprd():
    @validity_rule("above_third")
    def above_third(key, negative, *, threshold):  # a rule declares only the parameters it reads
        return negative & (key >= threshold / 3)

    try:
        batch = make_batch(random_slates(1), grad=False)
        got = get_loss("cprd", validity="above_third", threshold=0.9)(batch)["distill_loss"]
        torch.testing.assert_close(got, get_loss("cprd", threshold=0.3)(batch)["distill_loss"])
        assert "above_third" in loss_table_markdown()
    finally:
        del VALIDITY_RULES["above_third"]
    with pytest.raises(ValueError, match="validity must be one of"):
        get_loss("cprd", validity="above_third")


def test_a_validity_rule_cannot_select_positives_or_padding():
    @validity_rule("everything")
    def everything(key, negative):
        return torch.ones_like(negative)

    try:
        batch = make_batch(random_slates(2), grad=False)
        got = get_loss("cprd", validity="everything")(batch)["distill_loss"]
        torch.testing.assert_close(got, get_loss("cprd", validity="all")(batch)["distill_loss"])
    finally:
        del VALIDITY_RULES["everything"]


# ------------------------------------------------------------------------------------------------- README


def test_readme_loss_table_is_current():
    text = README.read_text(encoding="utf-8")
    assert table_in(text) == loss_table_markdown(), "run: python -m workbench.losses.table --write README.md"
    for name in list_losses():
        assert f"| `{name}` |" in text


def test_table_cli_write_and_check(tmp_path, capsys):
    stale = tmp_path / "README.md"
    stale.write_text(f"# Title\n\n{START}\nSTALE TABLE\n{END}\nafter\n", encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert main(["--write", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
    text = stale.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\n") and text.endswith(f"{END}\nafter\n") and "STALE" not in text
    assert main([]) == 0 and capsys.readouterr().out.endswith(loss_table_markdown())
    with pytest.raises(ValueError, match="must contain"):
        replace_table("no markers", "x")


def test_readme_add_a_loss_example_runs(scratch):
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Add a loss") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {"batch": make_batch(random_slates(0))}
    exec(compile(code, "README.md", "exec"), namespace)
    assert repr(get_loss("cprd_weighted", temperature=0.5)) == "cprd_weighted(threshold=0.5, temperature=0.5)"
    value = get_loss("cprd_weighted")(namespace["batch"])["distill_loss"]
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(namespace["batch"].student.grad).all()
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        get_loss("cprd_weighted", tau=1)


def test_reserved_names_are_refused():
    from workbench.losses import register_loss

    with pytest.raises(ValueError, match="reserved"):

        @register_loss("weighted_thing")
        def weighted_thing(batch, *, weight: float = 1.0):
            """Uses a reserved hyperparameter name."""
            return {"distill_loss": batch.student.sum() * weight}

    with pytest.raises(ValueError, match="reserved"):

        @register_loss("itc")
        def itc(batch):
            """Takes the trainer's ITC name."""
            return {"distill_loss": batch.student.sum()}
