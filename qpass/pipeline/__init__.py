"""The pass manager: order checks, verification of exact passes, report and coverage."""
from .coverage import CoverageRow, check_coverage, coverage, coverage_table
from .manager import Pipeline, sqnr_db
from .order import auto_order, check_order
from .report import LinearRecord, PassRecord, Report

__all__ = ["Pipeline", "check_order", "auto_order", "coverage", "check_coverage", "coverage_table",
           "CoverageRow", "Report", "PassRecord", "LinearRecord", "sqnr_db"]
