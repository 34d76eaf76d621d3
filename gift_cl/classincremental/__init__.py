"""Class-incremental learning: no task id at test, one growing label space (see :mod:`.heads`)."""
from .heads import OFFICIAL_RIDGES, PrototypeClassifier, RandomProjectionRidge

__all__ = ["OFFICIAL_RIDGES", "PrototypeClassifier", "RandomProjectionRidge"]
