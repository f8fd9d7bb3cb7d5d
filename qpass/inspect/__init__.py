"""`qpass inspect`: summaries of a captured graph and what passes did to it."""
from .render import render_dot, render_json, render_text
from .summary import summarize

__all__ = ["summarize", "render_text", "render_json", "render_dot"]
