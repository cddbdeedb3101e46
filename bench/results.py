"""BENCHMARKS.md's Results table, rendered from the committed compare outputs in docs/benchmarks/data/.

Each file there is the JSON that `harness compare` (and every pipeline) writes as
``results/ch04_<env>_comparison.json``, copied in with the experiment it reports: run ids, per-seed
success, the floor, time to 90%, and per training its budget, minutes, CPU and code version. Nothing in
the table is typed by hand.

    python bench/results.py          # rewrite the table between the markers in BENCHMARKS.md
    python bench/results.py --check  # exit 1 when BENCHMARKS.md's table is not what the data give
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


def render(data: Path = DATA) -> str:
    reports = [json.loads(path.read_text()) for path in sorted(data.glob("*.json"))]
    return "\n".join([HEADER, *(row(report) for report in reports)])


def current_table(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{BENCHMARKS.name} has no {BEGIN} ... {END} block")
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when BENCHMARKS.md's table is stale")
    args = parser.parse_args()
    text = BENCHMARKS.read_text()
    table = render()
    if args.check:
        if current_table(text) != table:
            print(f"{BENCHMARKS.name}'s Results table is stale: run python bench/results.py", file=sys.stderr)
            return 1
        print("BENCHMARKS.md's Results table matches docs/benchmarks/data/")
        return 0
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    BENCHMARKS.write_text(f"{before}{BEGIN}\n{table}\n{END}{after}")
    files = len(list(DATA.glob("*.json")))
    print(f"wrote the Results table of {BENCHMARKS.name} from {files} file(s) in {DATA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
