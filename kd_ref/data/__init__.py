"""Data sets of the course, one module each, and a small in-memory batch iterator."""
from .batches import TensorBatches
from .digits import DigitsSplit, keep_labels, load_digits_split
from .text import CharVocab, RandomCrops, TextSplit, ValidationWindows, bits_per_char, load_text, split_text

__all__ = ["TensorBatches", "DigitsSplit", "keep_labels", "load_digits_split", "CharVocab", "RandomCrops", "TextSplit",
           "ValidationWindows", "bits_per_char", "load_text", "split_text"]
