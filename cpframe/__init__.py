"""cpframe: build, verify, certify and distribute CCD calibration products.

See README.md for the quick start and docs/architecture.md for how the parts fit.
"""

from cpframe.core.errors import CpframeError
from cpframe.core.model import CollectionType, DataId, DatasetRef, DatasetType, Timespan

__version__ = "0.1.0"
__all__ = ["CpframeError", "CollectionType", "DataId", "DatasetRef", "DatasetType", "Timespan", "__version__"]
