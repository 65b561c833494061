"""The loss registry: every loss is a pure function of a ``ScoreBatch``, registered by name (a decorator registry
with tests generated from it, as timm's model registry; one signature for every loss, as allRank's).

A loss is ``fn(batch: ScoreBatch, *, hparam=default, ...) -> {"<term>_loss": scalar tensor, ...}``: the entries
whose names end in ``_loss`` are optimised (summed), any other entry is a diagnostic the trainer logs. Decorate it
with ``@register_loss("name")`` and it is usable everywhere a loss is chosen by name (training configs, the CLI
``name:key=value`` syntax, comparisons, notebook widgets)::

    @register_loss("cprd_top2", checks={"temperature": positive()})
    def cprd_top2(batch: ScoreBatch, *, temperature: float = 1.0) -> dict[str, torch.Tensor]:
        \"\"\"CPRD over the teacher's top-2 hard negatives.\"\"\"
        return cprd(batch, validity="top", m=2, temperature=temperature)

    loss = get_loss("cprd_top2", temperature=0.5)   # names and values validated here, before training starts
    terms = loss(batch)                              # {"distill_loss": tensor(...)}

Hyperparameter types come from the annotations (``float``, ``int``, ``bool``, ``str``, ``Literal[...]`` for a
fixed set of choices, ``X | None``), or from the default's type where there is no annotation; value ranges come
from the ``checks`` given at registration (``positive()``, ``at_least(x)``, ``in_range(lo, hi)``, ``one_of(...)``).
Re-registering the same function (same module and qualified name, as ``%autoreload`` or re-running a notebook
cell does) replaces the entry; a different function under a taken name raises.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from workbench.checks import check_choice, check_float, check_int
from workbench.scores.batch import ScoreBatch

LossFn = Callable[..., dict[str, torch.Tensor]]
Entries = Literal["negatives", "all"]
_SCALARS = (bool, int, float, str)


# --------------------------------------------------------------------------------------------------- rules


class Rule:
    """A range or choice constraint on one hyperparameter.

    Args:
        describe: returns the constraint in words for tables and widgets (e.g. ``"> 0"``).
        check: ``check(label, value)`` raises ``ValueError``/``TypeError`` naming ``label`` on a bad value.
        low, high: the allowed range (``None``: unbounded on that side), for widgets (slider ranges).
        strict_low: ``low`` itself is excluded (``> low``, as ``positive()``).
        choices: the allowed values (a live view for ``one_of``), or ``None``.
    """

    def __init__(self, describe: Callable[[], str], check: Callable[[str, Any], Any], *, low: float | None = None,
                 high: float | None = None, strict_low: bool = False, choices: Collection[Any] | None = None) -> None:
        self._describe = describe
        self.check = check
        self.low, self.high, self.strict_low, self.choices = low, high, strict_low, choices

    @property
    def text(self) -> str:
        """The constraint in words, as it is now."""
        return self._describe()

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"


def positive() -> Rule:
    """The value must be a finite number ``> 0`` (temperatures, scales)."""
    return Rule(lambda: "> 0", lambda label, v: check_float(label, v, min_value=0.0, strict_min=True), low=0.0,
                strict_low=True)


def at_least(low: float) -> Rule:
    """The value must be a finite number ``>= low``."""
    return Rule(lambda: f">= {low}", lambda label, v: check_float(label, v, min_value=low), low=low)


def in_range(low: float, high: float) -> Rule:
    """The value must be a finite number in ``[low, high]``."""
    return Rule(lambda: f"in [{low}, {high}]", lambda label, v: check_float(label, v, min_value=low, max_value=high),
                low=low, high=high)


def one_of(choices: Collection[Any]) -> Rule:
    """The value must be one of ``choices``; a live view (a dict's ``.keys()``) picks up later additions."""
    return Rule(
        lambda: "one of {" + ", ".join(map(str, choices)) + "}",
        lambda label, v: check_choice(label, v, choices),
        choices=choices,
    )


# --------------------------------------------------------------------------------------------- hyperparameters


@dataclass(frozen=True)
class HParam:
    """One keyword-only hyperparameter of a registered loss.

    Attributes:
        name: the keyword.
        default: its default value.
        kind: ``float``, ``int``, ``bool`` or ``str``; ``None`` = not type-checked.
        choices: the allowed values from a ``Literal[...]`` annotation, or ``None``.
        optional: ``None`` is an accepted value.
        rule: the range/choice constraint from ``register_loss(checks=...)``, or ``None``.
    """

    name: str
    default: Any
    kind: type | None
    choices: tuple[Any, ...] | None
    optional: bool
    rule: Rule | None

    def validate(self, loss: str, value: Any) -> Any:
        """Return ``value`` (ints widened to float for float parameters) or raise naming ``loss.name``."""
        label = f"{loss}: hyperparameter {self.name}"
        if value is None:
            if not self.optional:
                raise TypeError(f"{label} must be {self.type_text()}, got None")
            return None
        if self.choices is not None:
            check_choice(label, value, self.choices)
        elif self.kind is float:
            value = check_float(label, value)
        elif self.kind is int:
            check_int(label, value)
        elif self.kind is not None and not isinstance(value, self.kind):
            raise TypeError(f"{label} must be {self.type_text()}, got {type(value).__name__} {value!r}")
        if self.rule is not None:
            self.rule.check(label, value)
        return value

    def type_text(self) -> str:
        """The accepted type in words, e.g. ``"float"``, ``"one of {'a', 'b'}"``, ``"int or None"``."""
        text = "any" if self.kind is None else self.kind.__name__
        if self.choices is not None:
            text = "one of {" + ", ".join(map(repr, self.choices)) + "}"
        return text + (" or None" if self.optional else "")

    def describe(self) -> str:
        """``name=default`` plus the constraint, e.g. ``"temperature=1.0 (> 0)"``."""
        text = f"{self.name}={self.default!r}"
        if self.rule is not None:
            return f"{text} ({self.rule.text})"
        if self.choices is not None:
            return f"{text} ({'|'.join(map(str, self.choices))})"
        return text


def _hparams_of(fn: LossFn, name: str, checks: Mapping[str, Rule]) -> dict[str, HParam]:
    """Read the keyword-only hyperparameters of ``fn``; raise ``TypeError`` if its signature breaks the contract."""
    params = list(inspect.signature(fn).parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if not params or params[0].kind not in kinds:
        raise TypeError(f"loss {name!r}: the first parameter must be the ScoreBatch, got signature {_sig(fn)}")
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations (e.g. a notebook cell's local names): fall back to defaults
        hints = {}
    out = {}
    for p in params[1:]:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
            raise TypeError(
                f"loss {name!r}: hyperparameters must be keyword-only with defaults (after '*'), "
                f"got {p.name!r} in signature {_sig(fn)}"
            )
        out[p.name] = _hparam(p.name, p.default, hints.get(p.name), checks.get(p.name))
    unknown = sorted(set(checks) - set(out))
    if unknown:
        raise TypeError(f"loss {name!r}: checks name unknown hyperparameter(s) {unknown}; valid: {sorted(out)}")
    return out


def _hparam(name: str, default: Any, annotation: Any, rule: Rule | None) -> HParam:
    """Build an ``HParam`` from an annotation (or, if absent, the default's type)."""
    optional, choices, kind = default is None, None, None
    if annotation is None:
        kind = type(default) if isinstance(default, _SCALARS) else None
    else:
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            optional = optional or type(None) in args
            rest = [a for a in args if a is not type(None)]
            annotation = rest[0] if len(rest) == 1 else None
            args = typing.get_args(annotation)
        if typing.get_origin(annotation) is Literal:
            choices = args
        elif annotation in _SCALARS:
            kind = annotation
    return HParam(name, default, kind, choices, optional, rule)


def _sig(fn: Callable) -> str:
    return f"{fn.__name__}{inspect.signature(fn)}"


# ------------------------------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: the function and what the rest of the workbench needs to know about it.

    Attributes:
        name: the registered name.
        fn: ``fn(batch, **hparams) -> dict[str, Tensor]``.
        description: the first line of the function's docstring.
        source: where it is defined (``workbench/losses/cprd.py``, or the module name, e.g. ``__main__``).
        needs_teacher: calling it on a batch without teacher scores raises ``ValueError``.
        entries: ``"negatives"`` if only the slate's negatives (``mask & ~positive``) are read, so scores at
            positives never matter; ``"all"`` if positives are read too (ITC, KL, MSE, margin-MSE). Padding
            (``mask`` False) is never read.
        params: the hyperparameters by name, in signature order.
    """

    name: str
    fn: LossFn
    description: str
    source: str
    needs_teacher: bool
    entries: Entries
    params: Mapping[str, HParam]

    def signature(self) -> dict[str, Any]:
        """``{hyperparameter: default}`` in signature order."""
        return {k: p.default for k, p in self.params.items()}

    def bind(self, **hparams: Any) -> dict[str, Any]:
        """Validate ``hparams`` (names and values) and return them with the defaults filled in."""
        unknown = sorted(set(hparams) - set(self.params))
        if unknown:
            valid = ", ".join(p.describe() for p in self.params.values()) or "none"
            raise ValueError(f"loss {self.name!r} got unknown hyperparameter(s) {unknown}; valid: {valid}")
        return {k: p.validate(self.name, hparams.get(k, p.default)) for k, p in self.params.items()}


_REGISTRY: dict[str, LossSpec] = {}


RESERVED = frozenset({"weight"})
"""Hyperparameter names a loss may not use: ``weight`` is the term's weight in ``name:weight=W,...``."""


def register_loss(
    name: str,
    *,
    needs_teacher: bool = True,
    entries: Entries = "negatives",
    checks: Mapping[str, Rule] | None = None,
) -> Callable[[LossFn], LossFn]:
    """Decorator: register ``fn(batch, *, **hparams) -> {"..._loss": scalar}`` under ``name``.

    Args:
        name: a Python identifier (so the CLI's ``name:key=value`` syntax can carry it).
        needs_teacher: the loss reads ``batch.teacher`` (most distillation losses do).
        entries: ``"negatives"`` (reads only ``mask & ~positive`` entries) or ``"all"``; see ``LossSpec``.
        checks: value constraints per hyperparameter, e.g. ``{"temperature": positive()}``.

    Returns:
        The decorator; it returns ``fn`` unchanged, so the function stays directly callable.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"loss name must be a Python identifier such as 'cprd_top2', got {name!r}")
    if name == "itc":
        raise ValueError("loss name 'itc' is reserved: training uses it for the in-batch ITC term (infonce)")
    check_choice("entries", entries, typing.get_args(Entries))

    def decorate(fn: LossFn) -> LossFn:
        spec = _make_spec(name, fn, bool(needs_teacher), entries, dict(checks or {}))
        old = _REGISTRY.get(name)
        if old is not None and _identity(old.fn) != _identity(fn):
            raise ValueError(
                f"loss name {name!r} is taken by {_identity(old.fn)}; cannot register {_identity(fn)} under it "
                "(choose another name, or unregister_loss() the old one)"
            )
        _REGISTRY[name] = spec
        return fn

    return decorate


def _make_spec(name: str, fn: LossFn, needs_teacher: bool, entries: Entries, checks: dict) -> LossSpec:
    if not callable(fn):
        raise TypeError(f"register_loss({name!r}) must decorate a function, got {type(fn).__name__}")
    doc = inspect.getdoc(fn) or ""
    if not doc.strip():
        raise ValueError(f"loss {name!r}: {fn.__qualname__} needs a docstring (its first line is the description)")
    params = _hparams_of(fn, name, checks)
    if RESERVED & params.keys():
        raise ValueError(f"loss {name!r}: hyperparameter name(s) {sorted(RESERVED & params.keys())} are reserved "
                         "(the CLI spelling name:weight=W,... uses them for the term itself)")
    spec = LossSpec(name, fn, doc.strip().splitlines()[0], _source(fn), needs_teacher, entries, params)
    for p in params.values():  # a bad default is a bug in the loss: catch it at registration
        p.validate(name, p.default)
    return spec


def _identity(fn: Callable) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _source(fn: Callable) -> str:
    module = fn.__module__ or "?"
    return module.replace(".", "/") + ".py" if module.startswith("workbench.") else module


def unregister_loss(name: str) -> None:
    """Remove ``name`` from the registry (for tests and notebooks); unknown names raise ``ValueError``."""
    loss_spec(name)
    del _REGISTRY[name]


def loss_spec(name: str) -> LossSpec:
    """The ``LossSpec`` registered under ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; registered losses: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_losses() -> dict[str, str]:
    """``{name: one-line description}`` for every registered loss, in registration order."""
    return {name: spec.description for name, spec in _REGISTRY.items()}


def loss_signature(name: str) -> dict[str, Any]:
    """``{hyperparameter: default}`` of loss ``name``; types follow the annotations (see ``loss_spec``)."""
    return loss_spec(name).signature()


def get_loss(name: str, **hparams: Any) -> Loss:
    """The loss ``name`` bound to ``hparams``, validated now (unknown names, wrong types, out-of-range values).

    Returns:
        A ``Loss``: call it on a ``ScoreBatch`` to get ``{"..._loss": scalar tensor}``.
    """
    spec = loss_spec(name)
    return Loss(spec, spec.bind(**hparams))


class Loss:
    """A registered loss bound to validated hyperparameters (``functools.partial``-like).

    Attributes:
        name: the registered name.
        hparams: every hyperparameter, defaults filled in (what configs and logs record).
        spec: the ``LossSpec``.
    """

    def __init__(self, spec: LossSpec, hparams: Mapping[str, Any]) -> None:
        self.spec = spec
        self.name = spec.name
        self.hparams = dict(hparams)

    def __call__(self, batch: ScoreBatch) -> dict[str, torch.Tensor]:
        """Compute the loss terms on ``batch``: ``{"..._loss": scalar tensor}``."""
        if not isinstance(batch, ScoreBatch):
            raise TypeError(f"loss {self.name!r} takes a ScoreBatch, got {type(batch).__name__}")
        if self.spec.needs_teacher:
            batch.require_teacher(self.name)
        return _checked_terms(self.name, self.spec.fn(batch, **self.hparams))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{self.name}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Loss) and (self.name, self.hparams) == (other.name, other.hparams)

    def __hash__(self) -> int:
        return hash((self.name, tuple(self.hparams.items())))


def _checked_terms(name: str, terms: Any) -> dict[str, torch.Tensor]:
    """Check a loss's output: a dict of scalar tensors with at least one key ending in ``_loss``.

    Keys ending in ``_loss`` are the objective (the trainer sums them); any other key is a diagnostic the trainer
    logs but does not optimise (e.g. ``"valid_per_query"``).
    """
    if not isinstance(terms, dict) or not terms:
        raise TypeError(f"loss {name!r} must return a non-empty dict of scalar tensors, got {type(terms).__name__}")
    for key, value in terms.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"loss {name!r} returned key {key!r}; keys must be non-empty strings")
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(f"loss {name!r} returned {key!r} = {shape}; expected a scalar tensor")
    if not any(key.endswith("_loss") for key in terms):
        raise TypeError(f"loss {name!r} returned keys {sorted(terms)}; at least one must end in '_loss' "
                        "(the optimised terms; other keys are logged diagnostics)")
    return terms
