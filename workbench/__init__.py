"""CPRD Workbench: Contrastive Partial Ranking Distillation from a cross-encoder teacher to a dual-encoder student.

Layers (imports flow one way, left to right is "may import"):

    analysis -> training -> losses -> scores -> models -> data      (config, io, checks: below everything)
"""

__version__ = "0.1.0"
