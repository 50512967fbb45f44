from .datalist import load_datalist, sample_weights
from .readers import SUPPORTED_DTYPES, HDF5Reader, SliceFormatError, TiffFileReader, check_slice_array
from .slices import SLICE_SUFFIXES, SliceDataset, list_slices, read_slice_list, slice_name

__all__ = [
    "SLICE_SUFFIXES", "SUPPORTED_DTYPES", "HDF5Reader", "SliceDataset", "SliceFormatError", "TiffFileReader",
    "check_slice_array", "list_slices", "load_datalist", "read_slice_list", "sample_weights", "slice_name",
]
