"""Stack quality control: per-slice confidence, slice-to-slice consistency and the HTML report.

* :mod:`~plimonai.qc.confidence`: confidence from the logits (:class:`SliceConfidenced`, before ``LogitsToMaskd``);
* :mod:`~plimonai.qc.stack`: section numbers, stack order and the flag rules (:func:`flag_stack`);
* :mod:`~plimonai.qc.thumbs`: small mask thumbnails (``OUT/qc/thumbs/``);
* :mod:`~plimonai.qc.report`: ``OUT/report.html`` (:func:`write_report`, ``plimonai report OUT``).

The run writes the report through :class:`plimonai.handlers.QCReportHandler`.
"""

from .confidence import SliceConfidenced, border_band, logit_margin, slice_confidence
from .report import hardware_info, load_records, write_report, write_run_info
from .stack import DEFAULT_QC, aligned_iou, flag_stack, order_records, qc_settings, section_number
from .thumbs import mask_thumbnail, read_mask, thumb_path

__all__ = [
    "DEFAULT_QC",
    "SliceConfidenced",
    "aligned_iou",
    "border_band",
    "flag_stack",
    "hardware_info",
    "load_records",
    "logit_margin",
    "mask_thumbnail",
    "order_records",
    "qc_settings",
    "read_mask",
    "section_number",
    "slice_confidence",
    "thumb_path",
    "write_report",
    "write_run_info",
]
