"""How results are rendered, the one way for ``compare``, the pipelines' reports and the ablation.

A :class:`Table` prints with aligned columns on the console and as markdown in a report; a report is
published by :func:`publish_report`: ``<stem>.md`` (title, body, figure), ``<stem>.json`` and the
figure, each written atomically, logged to the active MLflow run, whose description (the note the
MLflow UI renders as markdown) becomes the title and body.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow

from harness.atomic_files import write_atomically, write_json_atomically, write_text_atomically
from harness.run_schema import NOTE_TAG


@dataclass(frozen=True)
class Table:
    """A header and rows of cells; ``widths`` are the console's least column widths (the first column is
    left-aligned, the others right-aligned, as numbers are)."""

    header: Sequence[str]
    rows: Sequence[Sequence[object]]
    widths: Sequence[int] = ()

    def text(self) -> str:
        widths = [
            max([len(str(cells[i])) for cells in (self.header, *self.rows)] + list(self.widths[i : i + 1]))
            for i in range(len(self.header))
        ]

        def line(cells: Sequence[object]) -> str:
            first, *rest = (str(c) for c in cells)
            return " | ".join([first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))])

        top = line(self.header)
        return "\n".join([top, "-" * len(top), *(line(row) for row in self.rows)])

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "|---" * len(self.header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in self.rows])


def new_figure(columns: int, width: float):
    """A figure of ``columns`` side-by-side axes, made with matplotlib's object API: no pyplot, so no
    backend is chosen and no global figure state is kept (a library must not call ``matplotlib.use``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4))
    return fig, fig.subplots(1, columns)


def save_figure(fig, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    # the temporary name ends in .tmp: the format is given, not read from the suffix
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".")))


def publish_report(
    stem: Path, title: str, body: str, figure: Path, data: dict[str, Any] | None = None, appendix: str = ""
) -> dict[str, str]:
    """Write ``<stem>.md`` (``# title``, the body, the figure, then ``appendix``) and, with ``data``,
    ``<stem>.json``; log them and the figure to the active run, whose description becomes the title
    and body. Returns the files written, by kind."""
    files = {"report_file": stem.with_suffix(".md")}
    image = f"![{title}]({figure.name})" if figure.parent == stem.parent else f"![{title}]({figure})"
    markdown = f"# {title}\n\n{body}\n"
    write_text_atomically(files["report_file"], markdown + f"\n{image}\n" + (f"\n{appendix}\n" if appendix else ""))
    if data is not None:
        files["results_file"] = stem.with_suffix(".json")
        write_json_atomically(files["results_file"], data)
    for path in (*files.values(), figure):
        mlflow.log_artifact(str(path))
    mlflow.set_tag(NOTE_TAG, markdown)
    return {kind: str(path) for kind, path in files.items()}
