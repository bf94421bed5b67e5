"""Ready-made distillation runs behind the ``kd-ref`` command, one module per recipe.

Each module has ``register(subparsers)``, which adds its subcommand and sets
``run=callable(args) -> int`` as the subcommand's default.
"""
from . import bench, cifar, digits, grade, lm, text

RECIPES = (digits, cifar, text, lm, grade, bench)


def register_all(subparsers) -> None:
    """Add every recipe's subcommand to the ``kd-ref`` parser."""
    for recipe in RECIPES:
        recipe.register(subparsers)
