"""Losses: pure functions of a ``ScoreBatch``, one family per file, registered by name.

    from workbench.losses import ScoreBatch, get_loss, list_losses
    terms = get_loss("cprd", validity="threshold", threshold=0.5)(batch)   # {"distill_loss": scalar}

Families: ``infonce`` (ITC), ``logit_kd`` (kl, mse, margin_mse), ``ranking`` (ranknet, listnet, listmle),
``cprd``, ``cprd_chain``. Add a loss with ``@register_loss("name")`` (see ``registry``) in a notebook cell or in a
new file of this package: every module here is imported when the package is (``discover_losses``), so its
decorators run with no other file edited. The README's loss table lists them all.
"""

import importlib
import pkgutil

from workbench.losses.registry import (
    HParam,
    Loss,
    LossSpec,
    Rule,
    at_least,
    get_loss,
    in_range,
    list_losses,
    loss_signature,
    loss_spec,
    one_of,
    positive,
    register_loss,
    unregister_loss,
)
from workbench.scores.batch import ScoreBatch

FIRST = ("infonce", "logit_kd", "ranking", "cprd", "cprd_chain")
"""Families imported first, in this order (the README table follows registration order); the others follow by name."""
NOT_LOSSES = frozenset({"registry", "table"})
"""Modules of this package that register no loss (``table`` imports this package; ``_*`` modules are helpers)."""


def discover_losses() -> list[str]:
    """Import every loss module of this package not imported yet (``FIRST``, then the rest by name), so that each
    one's ``@register_loss`` decorators run; return their names. Called once, when the package is imported."""
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    names = [n for n in FIRST if n in found] + [n for n in found if n not in FIRST and n not in NOT_LOSSES]
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


discover_losses()

__all__ = [
    "HParam",
    "Loss",
    "LossSpec",
    "Rule",
    "ScoreBatch",
    "at_least",
    "discover_losses",
    "get_loss",
    "in_range",
    "list_losses",
    "loss_signature",
    "loss_spec",
    "one_of",
    "positive",
    "register_loss",
    "unregister_loss",
]
