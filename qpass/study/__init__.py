"""The experiment grid (DESIGN §8): models × pipelines × tasks × seeds from one config, each
result cached by content hash (runner.py), and the study's outputs from its rows (report.py).
It sits above eval/ (it evaluates every cell) and below the CLI, which passes in how pipelines
are named (calibration is qpass.calibration.build_calibration).

    import qpass.study
    cfg  = qpass.study.read_config("studies/paper.toml")
    rows = qpass.study.run_study(cfg, qpass.presets.get)
    qpass.study.write_outputs(rows, cfg.out, "paper")"""
from . import acceleration, html_report, trajectory_cells
from .report import (HEADLINE, csv_text, headline, markdown, plots, rich_table, study_data,
                     summarize, write_outputs)
from .runner import (FP, MARKER, StudyConfig, bits_of, check_out_dir, code_version, format_of,
                     method_of,
                     model_identity, pipeline_identity, read_config, run_study)

__all__ = ["StudyConfig", "read_config", "run_study", "check_out_dir", "code_version",
           "model_identity", "pipeline_identity", "bits_of", "method_of", "format_of", "FP", "MARKER",
           "HEADLINE", "headline", "summarize", "rich_table", "markdown", "csv_text", "plots",
           "write_outputs", "study_data", "acceleration", "trajectory_cells", "html_report"]
