"""Networks used by the course, one module per data set, and a parameter counter."""
from .count import count_parameters
from .digits import DigitsCNN, DigitsMLP
from .gpt import CharGPT, GPTConfig, GPTOutput

__all__ = ["count_parameters", "DigitsCNN", "DigitsMLP", "CharGPT", "GPTConfig", "GPTOutput"]
