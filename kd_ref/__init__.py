"""kd_ref: a small, verified PyTorch reference library for knowledge distillation.

Every loss takes PyTorch tensors, checks its input (a ``ValueError`` names the
argument and the shapes), treats the teacher's tensors as constants and returns a
scalar. See README.md for the conventions and a training-loop example.
"""
from .hooks import FeatureHooks, module_names
from .losses import *  # noqa: F401,F403  (the public loss API, listed in losses.__all__)
from .losses import __all__ as _loss_names
from .regressor import ConvRegressor
from .teacher import freeze, teacher_forward

__version__ = "0.1.0"

__all__ = [*_loss_names, "ConvRegressor", "FeatureHooks", "module_names", "freeze", "teacher_forward"]
