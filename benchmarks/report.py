"""Turn the run records of benchmarks/grid.py into docs/results.md and learning-curve figures.

    python benchmarks/report.py                                   # every record folder -> docs/results.md
    python benchmarks/report.py --records benchmarks/records/smoke --out /tmp/smoke.md

Scores are D4RL-normalized (0 = uniform random policy, 100 = the scripted expert of our data), as
mean ± sample standard deviation (ddof=1) over seeds, with the number of seeds n. "Final" is the score
at the last evaluation; "best" is the maximum over a run's evaluations, an optimistic number chosen on
the evaluation itself. The paper's numbers are on OMAR's data, references and MPE version, so they are
comparable to ours in shape only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import shlex
import sys
from datetime import datetime, timezone

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import osd_common  # noqa: E402

ALGORITHM_ORDER = ("omsd", "omsd-independent", "omsd-beta0", "matd3-bc", "bc")
ALGORITHM_LABELS = {"omsd": "OMSD", "omsd-independent": "OMSD-independent", "omsd-beta0": "OMSD (beta 0)",
                    "matd3-bc": "MATD3+BC", "bc": "BC"}
TASK_LABELS = {"mpe/simple_spread": "spread (CN)", "mpe/simple_tag": "tag (PP)",
               "mpe/simple_world_comm": "world", "mamujoco/HalfCheetah-2x3": "HalfCheetah 2x3",
               "mamujoco/Hopper-3x1": "Hopper 3x1", "mamujoco/Ant-2x4": "Ant 2x4"}
# what a team size (osd_common.MPE_TEAM_SIZE_ARGS) counts: mpe/simple_spread-N4 -> "spread (CN), 4 agents"
TEAM_SIZE_UNITS = {"mpe/simple_spread": "agents", "mpe/simple_tag": "predators"}
# OMSD's normalized scores as reported by the paper (arXiv 2505.05968) on OMAR's MPE data; entries
# marked ≈ are inferred from the paper's text, not printed in its table.
PAPER_OMSD = {
    ("mpe/simple_spread", "expert"): "102.3", ("mpe/simple_spread", "medium"): "70.1",
    ("mpe/simple_spread", "random"): "69.8",
    ("mpe/simple_tag", "expert"): "≈160", ("mpe/simple_tag", "medium"): "137.1", ("mpe/simple_tag", "random"): "133.9",
    ("mpe/simple_world_comm", "expert"): "≈165", ("mpe/simple_world_comm", "medium"): "≈161",
    ("mpe/simple_world_comm", "random"): "141.1",
    # on og-marl's 2-agent HalfCheetah "Good" data (MuJoCo 2.1): an average return, not a normalized score
    ("mamujoco/HalfCheetah-2x3", "expert"): "return ≈8,620 (og-marl Good)",
}
PAPER_HEADER = "OMSD, reported by the paper on OMAR's data; comparable in shape only"
DATA_HEADER = "the data's own episodes"


def load_records(records_dir: pathlib.Path) -> list[dict]:
    """Every valid record `<algo>__<task>__<tier>__<seed>.json` of the folder; invalid ones are reported
    and left out."""
    records = []
    for path in sorted(records_dir.glob("*__*.json")):
        try:
            records.append(osd_common.load_record(path))
        except osd_common.RecordError as err:
            print(f"report: skipping {err}")
    return records


def mean_std(values) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; nan for one value) and count."""
    values = np.asarray(list(values), dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return float(values.mean()), std, len(values)


def format_cell(values, digits: int = 1) -> str:
    """'mean ± std (n=k)'; a single seed shows no ± part."""
    if not len(values):
        return "—"
    mean, std, n = mean_std(values)
    if n == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f} (n={n})"


def task_label(task: str) -> str:
    """A task's name in the tables: TASK_LABELS, with a team size's count of agents (spread (CN), 4 agents)."""
    try:
        base, size = osd_common.split_team_size(task)
    except osd_common.TaskError:
        return task
    if task == base or base not in TASK_LABELS:
        return TASK_LABELS.get(task, task)
    return f"{TASK_LABELS[base]}, {size} {TEAM_SIZE_UNITS[base]}"


def task_order(task: str) -> tuple:
    """Sort key of tasks: osd_common.TASKS' order, each task's team sizes right after it, smallest first."""
    try:
        base, size = osd_common.split_team_size(task)
    except osd_common.TaskError:
        base, size = task, None
    return _index(base, osd_common.TASKS), task != base, size or 0, task


def ordered(keys, order) -> list:
    keys = set(keys)
    return [k for k in order if k in keys] + sorted(k for k in keys if k not in order)


def group(records: list[dict]) -> dict:
    """(task, tier) -> algorithm -> [records], one per seed (a duplicated seed keeps the newest)."""
    cells: dict = collections.defaultdict(lambda: collections.defaultdict(dict))
    for record in sorted(records, key=lambda r: r["finished_at"]):
        cells[(record["task"], record["tier"])][record["algorithm"]][record["seed"]] = record
    return {cell: {algo: list(by_seed.values()) for algo, by_seed in algos.items()} for cell, algos in cells.items()}


def data_score(task: str, tier: str, runs: list[dict]) -> str:
    """The normalized score of the dataset's own average episode: from the records (written there since
    records carry dataset.normalized_score), else from the metadata of this checkout's cached dataset
    file, if it is the very file the runs used (same sha256)."""
    for record in runs:
        if record["dataset"].get("normalized_score") is not None:
            return f"{record['dataset']['normalized_score']:.1f}"
    try:
        with np.load(osd_common.dataset_path(task, tier), allow_pickle=False) as archive:
            meta = json.loads(str(archive["metadata"]))
    except (osd_common.TaskError, OSError, KeyError, ValueError):
        return "—"
    same_file = meta.get("sha256") in {r["dataset"]["sha256"] for r in runs}
    return f"{meta['normalized_score']:.1f}" if same_file and meta.get("normalized_score") is not None else "—"


def score_table(cells: dict, algorithms: list[str], key: str, with_paper: bool, with_data: bool = False) -> list[str]:
    header = ["task", "tier"] + [ALGORITHM_LABELS.get(a, a) for a in algorithms]
    if with_data:
        header.append(DATA_HEADER)
    if with_paper:
        header.append(PAPER_HEADER)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, tier in sorted(cells, key=lambda c: (task_order(c[0]), _index(c[1], osd_common.TIERS))):
        row = [task_label(task), tier]
        row += [format_cell([r[key] for r in cells[(task, tier)].get(a, [])]) for a in algorithms]
        if with_data:
            row.append(data_score(task, tier, [r for runs in cells[(task, tier)].values() for r in runs]))
        if with_paper:
            row.append(PAPER_OMSD.get((task, tier), "—"))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _index(value, order) -> int:
    return order.index(value) if value in order else len(order)


def cost_table(records: list[dict], algorithms: list[str]) -> list[str]:
    """Wall time and training updates/s per algorithm and task (mean over all its runs)."""
    by = collections.defaultdict(list)
    for record in records:
        by[(record["algorithm"], record["task"])].append(record)
    lines = ["| algorithm | task | runs | wall time per run (min) | updates/s (training only) |", "|---|---|---|---|---|"]
    for algorithm in algorithms:
        for task in sorted({t for a, t in by if a == algorithm}, key=task_order):
            runs = by[(algorithm, task)]
            wall = np.mean([r["wall_time_s"] for r in runs]) / 60
            ups = np.mean([r["updates_per_s"] for r in runs])
            lines.append(f"| {ALGORITHM_LABELS.get(algorithm, algorithm)} | {task_label(task)} | "
                         f"{len(runs)} | {wall:.1f} | {ups:.0f} |")
    return lines


def format_throughput(report: dict) -> str:
    """Markdown tables of a benchmarks/throughput.py report."""
    if "runs" in report:  # the scripts run as command lines: updates/s of each phase from the run records
        phases = list(dict.fromkeys(r["phase"] for r in report["runs"]))
        rows = {}
        for r in report["runs"]:
            rows.setdefault((r["task"], r["device"], r["threads"], r["batch_size"]), {})[r["phase"]] = r["updates_per_s"]
        lines = ["| task | device | threads | batch | " + " | ".join(f"{p}, updates/s" for p in phases) + " |",
                 "|---|---|---|---|" + "---|" * len(phases)]
        for (task, device, threads, batch), rates in rows.items():
            lines.append(f"| {task} | {device} | {threads} | {batch} | "
                         + " | ".join(f"{rates[p]:.0f}" if p in rates else "—" for p in phases) + " |")
        return "\n".join(lines)
    # reports written before throughput.py ran the scripts: random batches through imported updates
    phases = ("behavior", "critic", "actor")
    rows = {}
    for r in report["updates"]:
        rows.setdefault((r["task"], r["device"], r["threads"], r["batch_size"]), {})[r["phase"]] = r["updates_per_s"]
    lines = ["| task | device | threads | batch | " + " | ".join(f"{p} updates/s" for p in phases) + " |",
             "|---|---|---|---|" + "---|" * len(phases)]
    for (task, device, threads, batch), rates in rows.items():
        lines.append(f"| {task} | {device} | {threads} | {batch} | "
                     + " | ".join(f"{rates[p]:.0f}" if p in rates else "—" for p in phases) + " |")
    lines += ["", "| task | device | threads | agents | actor latency per env step, median (p90) |", "|---|---|---|---|---|"]
    for r in report["actor_latency"]:
        lines.append(f"| {r['task']} | {r['device']} | {r['threads']} | {r['n_agents']} | "
                     f"{r['median_ms']:.3f} ms ({r['p90_ms']:.3f} ms) |")
    if report.get("loop"):
        lines += ["", "Whole training-loop steps (`--loop`), steps/s, each row adding one change to the row above "
                  "(in parentheses: x the `before` row):", "",
                  "| task | device | threads | batch | loop | phase-1 step | phase-2 step |", "|---|---|---|---|---|---|---|"]
        loop_rows, before = {}, {}
        for r in report["loop"]:
            key = (r["task"], r["device"], r["threads"], r["batch_size"])
            loop_rows.setdefault((*key, r["variant"]), {})[r["phase"]] = r["steps_per_s"]
            if r["variant"] == "before":
                before[(*key, r["phase"])] = r["steps_per_s"]
        for (*key, variant), rates in loop_rows.items():
            cells = [f"{rates[p]:.0f} (x{rates[p] / before[(*key, p)]:.2f})" if p in rates and (*key, p) in before
                     else (f"{rates[p]:.0f}" if p in rates else "—") for p in ("phase-1 step", "phase-2 step")]
            lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line(machine: dict) -> str:
    return (f"{machine.get('platform')}, {machine.get('cpu_count')} CPUs ({machine.get('device_name')}), "
            f"Python {machine.get('python')}, torch {machine.get('torch')} with {machine.get('torch_threads')} "
            f"thread(s), device {machine.get('device')}")


def mean_curve(curves: list[list[list[float]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of eval curves [[step, score], ...], on the steps of the shortest curve
    (curves of one budget share their steps; others are interpolated onto them)."""
    shortest = min(curves, key=len)
    steps = np.array([p[0] for p in shortest], dtype=np.float64)
    values = np.stack([np.interp(steps, [p[0] for p in c], [p[1] for p in c]) for c in curves])
    return steps, values.mean(0), values.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(steps)


def plot_curves(cells: dict, algorithms: list[str], figures_dir: pathlib.Path, prefix: str = "") -> list[pathlib.Path]:
    """One figure per task, one panel per tier, one line (mean ± std band over seeds) per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figures_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    colors = {algo: f"C{i}" for i, algo in enumerate(algorithms)}
    for task in sorted({t for t, _ in cells}, key=task_order):
        tiers = ordered({tier for t, tier in cells if t == task}, osd_common.TIERS)
        cols = min(len(tiers), 3)
        rows = -(-len(tiers) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(max(4.0 * cols, 6.0), 3.2 * rows + 0.6), squeeze=False,
                                 sharey=True)
        axes = axes.ravel()
        for ax in axes[len(tiers):]:
            ax.set_visible(False)
        handles = {}
        for ax, tier in zip(axes, tiers):
            seeds = set()
            for algorithm in algorithms:
                runs = cells[(task, tier)].get(algorithm, [])
                if not runs:
                    continue
                seeds.add(len(runs))
                # the line is the periodic evaluations (few episodes, the same start states each time); the
                # last point of every curve is the final score over more episodes, so it gets its own marker
                # instead of a segment that would read as late-training progress
                periodic = [r["eval_curve"][:-1] for r in runs if len(r["eval_curve"]) > 1]
                if len(periodic) == len(runs):
                    steps, mean, std = mean_curve(periodic)
                    (handles[algorithm],) = ax.plot(steps, mean, color=colors[algorithm], marker="o", markersize=2.5)
                    ax.fill_between(steps, mean - std, mean + std, color=colors[algorithm], alpha=0.2)
                finals = np.array([r["final_normalized_score"] for r in runs], dtype=np.float64)
                final_step = max(r["eval_curve"][-1][0] for r in runs)
                final_std = finals.std(ddof=1) if len(finals) > 1 else 0.0
                container = ax.errorbar([final_step], [finals.mean()], yerr=[final_std], color=colors[algorithm],
                                        marker="*", markersize=8, capsize=3, linestyle="none")
                handles.setdefault(algorithm, container.lines[0])
            ax.axhline(100.0, color="grey", lw=0.8, ls="--")
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
            n = f"n={min(seeds)}" if len(seeds) == 1 else f"n={min(seeds)}-{max(seeds)}"
            ax.set_title(f"{tier} ({n} seed{'' if seeds == {1} else 's'})", fontsize=9)
            ax.set_xlabel("training step at evaluation")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
                lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"))
            ax.grid(alpha=0.3)
        for ax in axes[::cols]:
            ax.set_ylabel("normalized score")
        fig.legend([handles[a] for a in algorithms if a in handles],
                   [ALGORITHM_LABELS.get(a, a) for a in algorithms if a in handles],
                   loc="lower center", ncol=max(len(handles), 1), fontsize=8, frameon=False)
        separator = " " if cols > 1 else "\n"  # one panel is too narrow for the title on one line
        fig.suptitle(f"{task}: normalized score during training{separator}(star: final score), mean ± std over seeds",
                     fontsize=10)
        fig.tight_layout(rect=(0, 0.6 / (3.2 * rows + 0.6), 1, 1))
        path = figures_dir / f"curves_{prefix}{task.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def budget_of(records_dir: pathlib.Path) -> str:
    """The grid budget a record folder was run at (its manifest says), else the folder's name."""
    manifest = records_dir / "grid_manifest.json"
    if manifest.exists():
        try:
            budgets = {entry.get("budget") for entry in json.loads(manifest.read_text())["invocations"]}
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            print(f"report: {manifest} is unreadable ({error!r}); labelling its records by the folder name "
                  f"'{records_dir.name}'. Restore the file from git to label them by budget.", file=sys.stderr)
            budgets = set()
        if len(budgets) == 1:
            return str(budgets.pop())
    return records_dir.name


def default_record_dirs(root: pathlib.Path) -> list[pathlib.Path]:
    """Every folder of benchmarks/records with records (one per budget and overrides), `smoke*` left out
    (their scores mean nothing)."""
    dirs = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("smoke")
                           and p.name != "logs")
    return [d for d in dirs if any(d.glob("*__*.json"))]


def return_table(cells: dict, algorithms: list[str]) -> list[str]:
    """Final average return (each run's last evaluation mean; mean ± std over seeds)."""
    header = ["task", "tier"] + [ALGORITHM_LABELS.get(a, a) for a in algorithms]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, tier in sorted(cells, key=lambda c: (task_order(c[0]), _index(c[1], osd_common.TIERS))):
        row = [task_label(task), tier]
        row += [format_cell([r["final_return_mean"] for r in cells[(task, tier)].get(a, [])], digits=1 if
                            task.startswith("mpe/") else 0) for a in algorithms]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def section(records_dir: pathlib.Path, records: list[dict], out: pathlib.Path, figures_dir: pathlib.Path | None,
            figure_prefix: str, level: str) -> list[str]:
    """Tables, curves and provenance of the runs of one record folder."""
    cells = group(records)
    algorithms = ordered({r["algorithm"] for r in records}, ALGORITHM_ORDER)
    with_paper = any(cell in PAPER_OMSD for cell in cells)
    about = records_dir / "ABOUT.md"  # what these runs are, in a sentence or two, written by whoever made them
    lines = [about.read_text().strip(), ""] if about.exists() else []
    lines += [
        f"{level} Final normalized score (last evaluation)",
        "",
        *score_table(cells, algorithms, "final_normalized_score", with_paper, with_data=True),
        "",
        f"\"{DATA_HEADER}\": the normalized score of the dataset's average episode, the level a learner must "
        "pass to improve on its data.",
        "",
    ]
    if with_paper:
        lines += [
            "The last column is OMSD's score as the paper reports it: the paper trains "
            "on OMAR's datasets, in OMAR's modified MPE with other rewards and other reference returns, so "
            "its values cannot be set against ours; only the ordering across tiers is comparable. ≈ marks "
            "values inferred from the paper's text rather than printed in its table. For HalfCheetah the paper "
            "gives an average return on og-marl's 2-agent \"Good\" data, not a normalized score.",
            "",
        ]
    lines += [
        f"{level} Best normalized score (maximum over evaluations; optimistic)",
        "",
        *score_table(cells, algorithms, "best_normalized_score", False),
        "",
        f"{level} Final average return",
        "",
        *return_table(cells, algorithms),
        "",
        f"{level} Cost",
        "",
        *cost_table(records, algorithms),
        "",
    ]
    if figures_dir is not None:
        lines += [f"{level} Learning curves", ""]
        for path in plot_curves(cells, algorithms, figures_dir, figure_prefix):
            rel = os.path.relpath(path, out.parent)
            lines += [f"![learning curves]({rel})", ""]
        lines += ["The x axis is each algorithm's own training step: actor steps (phase 2) for OMSD, critic "
                  "steps for MATD3+BC, steps for BC. Bands are ± one standard deviation over seeds. The line is "
                  "the periodic evaluations (a few episodes from the same start states each time); the star at "
                  "the end is the final score, over the record's own episode count (the number in the tables), "
                  "with its standard deviation over seeds as the error bar.", ""]

    lines += [f"{level} How these records were made", ""]
    manifest = records_dir / "grid_manifest.json"
    if manifest.exists():
        try:
            invocations = json.loads(manifest.read_text())["invocations"]
        except (json.JSONDecodeError, KeyError, TypeError):
            invocations = []
        if invocations:
            lines += ["Grid commands (`benchmarks/grid.py`, budgets in its `BUDGETS`):", ""]
            for entry in invocations:
                lines.append(f"- `{entry.get('command')}` ({entry.get('started_at')}, budget {entry.get('budget')}, "
                             f"{entry.get('to_run')} of {entry.get('runs')} runs, {entry.get('workers')} workers, "
                             f"{entry.get('backend')})")
            lines.append("")
    lines += ["One run's command per algorithm (every record keeps its own):", ""]
    for algorithm in algorithms:
        example = next(r for r in records if r["algorithm"] == algorithm)
        lines.append(f"- {ALGORITHM_LABELS.get(algorithm, algorithm)}: `{example['command']}`")
    lines += ["", "Machines:", ""]
    machines = collections.Counter(machine_line(r["machine"]) for r in records)
    lines += [f"- {line} ({count} runs)" for line, count in machines.most_common()]
    commits = collections.Counter(
        f"{r['git_commit'] or 'unknown'}{' (uncommitted changes)' if r['git_dirty'] else ''}" for r in records)
    lines += ["", "Code versions (git commit): " + ", ".join(f"`{c}` ({n} runs)" for c, n in commits.most_common()), ""]
    mixed = [f"{task}/{tier}" for (task, tier), algos in cells.items()
             if len({r["dataset"]["sha256"] for runs in algos.values() for r in runs}) > 1]
    if mixed:
        lines += [f"**Warning:** runs of {', '.join(mixed)} used different dataset files (sha256 differs).", ""]
    return lines


def build_report(records_dirs: list[pathlib.Path], out: pathlib.Path, figures_dir: pathlib.Path | None,
                 command: str, throughput: pathlib.Path | None = None) -> str:
    """docs/results.md: one section per record folder (one budget each), then the throughput tables."""
    loaded = [(d, load_records(d)) for d in records_dirs]
    loaded = [(d, records) for d, records in loaded if records]
    if not loaded:
        raise SystemExit(f"report: no valid records in {', '.join(str(d) for d in records_dirs)}; "
                         "run `python benchmarks/grid.py` first")
    n_runs = sum(len(records) for _, records in loaded)
    # older records lack the data's own score; another record of the very same file (same sha256) may
    # carry it, so the table does not depend on which datasets this checkout has cached (in memory only)
    known = {r["dataset"]["sha256"]: r["dataset"]["normalized_score"] for _, records in loaded for r in records
             if r["dataset"].get("normalized_score") is not None}
    for _, records in loaded:
        for record in records:
            if record["dataset"].get("normalized_score") is None and record["dataset"].get("sha256") in known:
                record["dataset"]["normalized_score"] = known[record["dataset"]["sha256"]]
    lines = [
        "# Results",
        "",
        f"Generated by `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {n_runs} run records "
        f"in {', '.join(f'`{_rel(d)}`' for d, _ in loaded)}; do not edit by hand.",
        "",
        "Normalized score: 0 is the uniform random policy, 100 the expert behavior policy of our data "
        "(datasets/reference_returns.json). Cells are mean ± sample standard deviation (ddof=1) over "
        "training seeds, with the number of seeds n. Each section holds the runs of one record folder, "
        "that is one training budget (`benchmarks/grid.py`'s `BUDGETS`); numbers of different sections "
        "were trained for different lengths and do not share a table.",
        "",
    ]
    single = len(loaded) == 1
    for records_dir, records in loaded:
        if single:
            lines += section(records_dir, records, out, figures_dir, "", "##")
        else:
            # folders are named <budget>[_<overrides>] (benchmarks/grid.py); older ones may say less
            budget, name = budget_of(records_dir), records_dir.name
            title = f"`{name}`" + ("" if budget in (name, name.split("_", 1)[0]) else f" (budget `{budget}`)")
            lines += [f"## {title}: {len(records)} run{'s' if len(records) != 1 else ''} in `{_rel(records_dir)}`", ""]
            lines += section(records_dir, records, out, figures_dir, f"{name}_", "###")

    if throughput is not None and throughput.exists():
        measured = json.loads(throughput.read_text())
        if "runs" in measured:  # the scripts' own training loops, on the tasks' datasets
            machines = {f"{r['device']}/{r['threads']}": r["record"]["machine"] for r in measured["runs"]}
            how = "the scripts run as command lines on each task's dataset (commands in the report's runs)"
        else:
            machines, how = measured["machines"], "synthetic batches of each task's shapes"
        lines += ["## Throughput of OMSD's phases", "", f"`{measured['command']}` ({measured['measured_at']}), {how}; "
                  "machines: " + "; ".join(f"{key}: {machine_line(m)}" for key, m in machines.items()),
                  "", format_throughput(measured), ""]

    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    out.write_text(text)
    return text


def _rel(path: pathlib.Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=pathlib.Path, nargs="+", default=None,
                        help="folders of run records, one section each (default: every folder of benchmarks/records "
                             "with records, except smoke*)")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs" / "results.md", help="the markdown file")
    parser.add_argument("--figures-dir", type=pathlib.Path, default=REPO / "docs" / "figures",
                        help="where the learning-curve PNGs go")
    parser.add_argument("--no-figures", action="store_true", help="only the tables")
    parser.add_argument("--throughput", type=pathlib.Path, default=REPO / "benchmarks" / "records" / "throughput.json",
                        help="a benchmarks/throughput.py result to include, if the file exists")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "benchmarks/report.py", *(sys.argv[1:] if argv is None else argv)])
    records_dirs = args.records or default_record_dirs(REPO / "benchmarks" / "records")
    build_report(records_dirs, args.out, None if args.no_figures else args.figures_dir, command, args.throughput)
    print(f"report: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
