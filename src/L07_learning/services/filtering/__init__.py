"""Building blocks of ``ExampleQualityFilter``: content scans (secrets, poisoning, PII), near-duplicate index,
outlier detection and the filter's configuration. Each check returns findings; none raises per record."""

from .config import FilterConfig
from .findings import Finding
from .scan import SCAN_VERSION, ContentScanner, ScanReport

__all__ = ["SCAN_VERSION", "ContentScanner", "FilterConfig", "Finding", "ScanReport"]
