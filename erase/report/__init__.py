"""Reports: image grids that blur what a detector flags, self-contained HTML pages, markdown tables."""

from erase.report.html import markdown_summary, render_evaluation_page, render_leaderboard
from erase.report.images import blur_flagged, image_grid, save_image

__all__ = [
    "blur_flagged",
    "image_grid",
    "markdown_summary",
    "render_evaluation_page",
    "render_leaderboard",
    "save_image",
]
