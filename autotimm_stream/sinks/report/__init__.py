"""The run report: ``report.md`` with PNG plots of fps, latency, outputs and drops per stream."""

from .buckets import LABELS_PER_BUCKET, Bucket
from .plots import REPORT_FILES
from .sink import ReportSink

__all__ = ["ReportSink", "Bucket", "REPORT_FILES", "LABELS_PER_BUCKET"]
