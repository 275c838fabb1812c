"""Reports: image grids that blur what a detector flags, self-contained HTML pages, markdown tables, the run's
comparison page (base, baselines and erased side by side) and leaderboards grouped by base model and suites."""

from erase.report.html import markdown_summary, render_evaluation_page
from erase.report.images import blur_flagged, image_grid, save_image

__all__ = [
    "blur_flagged",
    "image_grid",
    "markdown_summary",
    "render_comparison",
    "render_evaluation_page",
    "save_image",
    "write_leaderboard",
]


def __getattr__(name: str):
    # Imported on use: the comparison and leaderboard read evaluation records, and erase.evaluation imports this package.
    if name == "render_comparison":
        from erase.report.run_report import render_comparison

        return render_comparison
    if name == "write_leaderboard":
        from erase.report.leaderboard import write_leaderboard

        return write_leaderboard
    raise AttributeError(name)
