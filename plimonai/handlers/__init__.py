from .metrics import BoundaryF1
from .optimize import FuseConvBN
from .progress import SliceProgressBar
from .summary import SUMMARY_FIELDS, SliceSummaryHandler, raise_if_failed, read_summary

__all__ = ["BoundaryF1", "FuseConvBN", "SUMMARY_FIELDS", "SliceProgressBar", "SliceSummaryHandler", "raise_if_failed", "read_summary"]
