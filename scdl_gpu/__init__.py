"""scdl_gpu: a GPU-native single-cell data loader over bionemo-scdl compatible archives.

The names below mirror bionemo-scdl's, so switching is a change of imports. Importing this
package never imports CuPy or kvikio.
"""

from .archive import FileNames, Mode, NeighborSamplingStrategy
from .collate import collate_neighbor_sparse_matrix_batch, collate_sparse_matrix_batch
from .convert import convert_h5ad
from .dataset import SingleCellMemMapDataset
from .errors import ArchiveError, ArchiveNotFoundError, ConversionError, HeaderSerializationError

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "ArchiveNotFoundError",
    "ConversionError",
    "FileNames",
    "HeaderSerializationError",
    "Mode",
    "NeighborSamplingStrategy",
    "SingleCellMemMapDataset",
    "collate_neighbor_sparse_matrix_batch",
    "collate_sparse_matrix_batch",
    "convert_h5ad",
]
assert __all__ == sorted(__all__)
