"""The pass contract (pass_base.py), the pipeline (manager.py) and the one executor that runs
it stage by stage (executor.py): order checks, verification of exact passes, facts, coverage."""
from .pass_base import Fact, Pass, PassContext, PassResult
from .coverage import check_coverage, coverage
from .manager import Pipeline
from .verify import sqnr_db
from .order import auto_order, check_order
from ..runtime.report import CoverageRow, LinearRecord, PassRecord, Report, coverage_table

__all__ = ["Fact", "Pass", "PassContext", "PassResult", "Pipeline", "check_order", "auto_order",
           "coverage", "check_coverage", "coverage_table", "CoverageRow", "Report", "PassRecord",
           "LinearRecord", "sqnr_db"]
