from .finetune import AnchorToInit, KeepBatchNormStats
from .metrics import BoundaryF1
from .optimize import FuseConvBN
from .progress import SliceProgressBar
from .report import QCReportHandler
from .summary import SUMMARY_FIELDS, SliceSummaryHandler, raise_if_failed, read_summary

__all__ = ["AnchorToInit", "BoundaryF1", "KeepBatchNormStats", "FuseConvBN", "QCReportHandler", "SUMMARY_FIELDS", "SliceProgressBar", "SliceSummaryHandler", "raise_if_failed", "read_summary"]
