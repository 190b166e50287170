"""Data: static image sets (digits, MNIST, Fashion-MNIST), event sets (tonic) and encoders."""

from . import events  # noqa: F401  (registers the event data sets)
from . import temporal  # noqa: F401  (registers the generated temporal task)
from .encoders import ENCODERS, encode_batch, get_encoder, is_constant, normalize_constant
from .registry import DataBundle, build_data, dataset_names, make_loader, register_dataset, with_index
from .static import DataError, load_digits_arrays, load_idx_dataset

__all__ = [
    "DataBundle", "DataError", "ENCODERS", "build_data", "dataset_names", "encode_batch", "get_encoder",
    "is_constant", "load_digits_arrays", "load_idx_dataset", "make_loader", "normalize_constant",
    "register_dataset", "with_index",
]
