"""Losses: pure functions of a ``ScoreBatch``, one family per file, registered by name.

    from workbench.losses import ScoreBatch, get_loss, list_losses
    terms = get_loss("cprd", validity="threshold", threshold=0.5)(batch)   # {"distill_loss": scalar}

Families: ``infonce`` (ITC), ``logit_kd`` (kl, mse, margin_mse), ``ranking`` (ranknet, listnet, listmle),
``cprd``. Add a loss with ``@register_loss("name")`` (see ``registry``); the README's loss table lists them all.
"""

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

# Importing the families registers their losses (in this order: the README table follows it).
from workbench.losses import infonce, logit_kd, ranking, cprd, cprd_chain  # noqa: E402, F401, I001  isort: skip

__all__ = [
    "HParam",
    "Loss",
    "LossSpec",
    "Rule",
    "ScoreBatch",
    "at_least",
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
