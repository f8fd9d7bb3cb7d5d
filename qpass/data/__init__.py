"""Offline text sources for the embedded tiny dLLM and its three task categories."""
from .sources import (ARITH_FILE, CODE_FILE, GENERAL_FILE, arithmetic_problems, build_corpus,
                      calibration_texts,
                      eval_dir, read_eval_text)

__all__ = ["build_corpus", "calibration_texts", "arithmetic_problems", "eval_dir", "read_eval_text",
           "GENERAL_FILE", "CODE_FILE", "ARITH_FILE"]
