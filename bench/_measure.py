"""What every benchmark script shares: the machine line that heads its output, its --threads and --json
options, and how figures are written, so that two scripts never describe or time a machine differently."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Any

import click


def threads_option(default: int = 1):
    return click.option(
        "--threads",
        type=click.IntRange(min=0),
        default=default,
        show_default=True,
        help="Torch threads; 0 keeps torch's default. One per training is how trainings run side by side.",
    )


json_option = click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the figures to this JSON file.",
)


def use_threads(threads: int) -> None:
    """Torch's thread count for the measurement (0: torch's default)."""
    import torch

    if threads:
        torch.set_num_threads(threads)


def machine_line() -> str:
    """The CPU as torch sees it: its model, cores, instruction set, native bf16, threads, and the date."""
    import torch

    from harness.algorithms import cpu_capability, native_bf16
    from harness.provenance import cpu_model

    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, instruction set "
        f"{cpu_capability()}, native bf16 {'yes' if native_bf16('cpu') else 'no'}, "
        f"{torch.get_num_threads()} thread(s); {date.today().isoformat()}"
    )


def write_figures(path: Path | None, figures: dict[str, Any]) -> None:
    """The figures as JSON, with the machine line, when --json was given."""
    if path:
        path.write_text(json.dumps({"machine": machine_line(), **figures}, indent=2) + "\n")
