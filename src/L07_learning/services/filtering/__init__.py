"""Parts of ``ExampleQualityFilter``: the keep / drop-with-reason record (``decisions``), the rules it runs in the
contract's order (``rules``, ``content_rules``, ``duplicate_rules``), the detectors behind them (content scans for
secrets, poisoning and PII, the near-duplicate index, outlier detection), the pool a batch is compared with, the
composite score, storage of the decisions, and the filter's configuration. No check raises per record."""

from .config import FilterConfig
from .decisions import Decision, FilterDecision, FilterReport
from .findings import Finding
from .scan import SCAN_VERSION, ContentScanner, ScanReport

__all__ = ["SCAN_VERSION", "ContentScanner", "Decision", "FilterConfig", "FilterDecision", "FilterReport", "Finding",
           "ScanReport"]
