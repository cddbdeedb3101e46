"""BENCHMARKS.md's Results table and each task page's per-seed table, rendered from the committed compare
outputs in docs/benchmarks/data/.

Each file there is the JSON that `harness compare` (and every pipeline) writes as
``results/ch04_<env>_comparison.json``, copied in with the experiment it reports: run ids, per-seed
success, the floor, time to 90%, and per training its budget, minutes, CPU and code version. Nothing in
the tables is typed by hand.

    python bench/results.py          # rewrite the tables between the markers (BENCHMARKS.md, docs/benchmarks/<task>.md)
    python bench/results.py --check  # exit 1 when a table is not what the data give
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "benchmarks" / "data"
BENCHMARKS = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- results:begin (bench/results.py) -->", "<!-- results:end -->"
SEEDS_BEGIN, SEEDS_END = "<!-- seeds:begin (bench/results.py) -->", "<!-- seeds:end -->"
PAGES = {
    "FetchReach-v4": "reach.md",
    "FetchPush-v4": "push.md",
    "FetchPickAndPlace-v4": "pick-and-place.md",
    "FetchSlide-v4": "slide.md",
}
HEADER = (
    "| task | recipe | HER success per seed | no-HER per seed | do-nothing floor | env steps to 90% (median) "
    "| minutes per training | clear separation | pipeline run, code |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def percent(values: list[float]) -> str:
    return ", ".join(f"{100 * value:.0f}%" for value in values)


def row(report: dict) -> str:
    her, no_her = report["conditions"]["her"], report["conditions"]["no_her"]
    runs = her.get("runs") or []
    if not runs:
        raise ValueError(f"{report['env_id']}: the compare output has no per-run provenance (made before it was recorded)")
    steps = sorted({run["total_steps"] for run in runs})
    presets = sorted({run["preset"] or "?" for run in runs})
    to_90 = report["statistics"]["conditions"]["her"]["to_90"]["steps"]
    reached = [s for s in to_90 if s is not None]
    median_90 = (
        f"{statistics.median(reached) / 1000:.0f}k"
        + ("" if len(reached) == len(to_90) else f" ({len(reached)} of {len(to_90)})")
        if reached
        else "not reached"
    )
    minutes = [run["minutes"] for run in runs + (no_her.get("runs") or []) if run["minutes"] is not None]
    cpus = sorted({f"{run['cpu']} (torch {run['cpu_capability']}, {run['precision']})" for run in runs})
    floor = report["statistics"].get("floor")
    floor_text = "-" if floor is None else f"{100 * floor['success_rate']:.1f}%"
    parents = sorted({run["parent_run_id"] or "none" for run in runs})
    versions = sorted({(run["code_version"] or "?")[:12] for run in runs})
    return (
        f"| {report['env_id']} | {report['algo']} `--preset {', '.join(presets)}`, "
        f"{', '.join(f'{s / 1000:.0f}k' for s in steps)} env steps, seeds {', '.join(map(str, report['seeds']))} "
        f"| {percent(her['per_seed']['eval/success_rate'])} | {percent(no_her['per_seed']['eval/success_rate'])} "
        f"| {floor_text} | {median_90} "
        f"| {min(minutes):.1f}-{max(minutes):.1f} on {'; '.join(cpus)} "
        f"| {'yes' if report['clear_separation'] else 'no'} | `{', '.join(parents)}` at `{', '.join(versions)}` |"
    )


def steps_text(steps: int | None) -> str:
    return "never" if steps is None else f"{steps / 1000:.0f}k"


def seeds_table(report: dict) -> str:
    """Per seed: each condition's success on the evaluation episodes, when HER's periodic evaluations first
    read 50% and 90%, and each training's minutes and run."""
    her, no_her = report["conditions"]["her"], report["conditions"]["no_her"]
    thresholds = report["statistics"]["conditions"]["her"]
    lines = [
        "| seed | HER success | HER first >= 50% / >= 90% (env steps) | HER minutes | no-HER success | no-HER minutes "
        "| HER run | no-HER run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, seed in enumerate(report["seeds"]):
        h, n = her["runs"][i], no_her["runs"][i]
        lines.append(
            f"| {seed} | {percent([her['per_seed']['eval/success_rate'][i]])} "
            f"| {steps_text(thresholds['to_50']['steps'][i])} / {steps_text(thresholds['to_90']['steps'][i])} "
            f"| {h['minutes']} | {percent([no_her['per_seed']['eval/success_rate'][i]])} | {n['minutes']} "
            f"| `{h['run_id']}` | `{n['run_id']}` |"
        )
    return "\n".join(lines)


def reports(data: Path = DATA) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(data.glob("*.json"))]


def render(data: Path = DATA) -> str:
    return "\n".join([HEADER, *(row(report) for report in reports(data))])


def between(text: str, begin: str, end: str, name: str) -> str:
    if begin not in text or end not in text:
        raise SystemExit(f"{name} has no {begin} ... {end} block")
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def current_table(text: str) -> str:
    return between(text, BEGIN, END, BENCHMARKS.name)


def replaced(text: str, begin: str, end: str, table: str) -> str:
    before, rest = text.split(begin, 1)
    return f"{before}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}"


def page_tables() -> dict[Path, str]:
    """Each task page with a compare output: the per-seed table it must show."""
    return {DATA.parent / PAGES[report["env_id"]]: seeds_table(report) for report in reports()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when BENCHMARKS.md's table is stale")
    args = parser.parse_args()
    text = BENCHMARKS.read_text()
    table = render()
    pages = page_tables()
    if args.check:
        stale = [BENCHMARKS.name] if current_table(text) != table else []
        stale += [
            str(page.relative_to(ROOT))
            for page, seeds in pages.items()
            if between(page.read_text(), SEEDS_BEGIN, SEEDS_END, page.name) != seeds
        ]
        if stale:
            print(f"stale tables in {', '.join(stale)}: run python bench/results.py", file=sys.stderr)
            return 1
        print("BENCHMARKS.md's Results table and the task pages' per-seed tables match docs/benchmarks/data/")
        return 0
    BENCHMARKS.write_text(replaced(text, BEGIN, END, table))
    for page, seeds in pages.items():
        page_text = page.read_text()
        between(page_text, SEEDS_BEGIN, SEEDS_END, page.name)  # the page must have the block
        page.write_text(replaced(page_text, SEEDS_BEGIN, SEEDS_END, seeds))
    files = len(list(DATA.glob("*.json")))
    print(f"wrote the Results table of {BENCHMARKS.name} and {len(pages)} task page table(s) from {files} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
