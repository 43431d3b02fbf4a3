"""Write ``docs/benchmarks.md`` (markdown tables) and ``docs/img/benchmarks-<device>.png``
from the JSON files in ``bench/results`` (run the benchmarks first).

    python bench/report.py [--results bench/results] [--docs docs]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ms(seconds) -> str:
    return f"{1e3 * seconds:.1f}" if seconds is not None else "—"


def ratio(x) -> str:
    return f"{x:.2f}x" if x is not None else "—"


def peers_section(data: dict, image: str) -> list[str]:
    """Tables of ``bench/cpu_peers.py``: time per method, then the acceptance ratios."""
    lines = [
        f"## Laplacian against the peers on `{data['device']}` ({data['threads']} threads)",
        "",
        f"`python bench/cpu_peers.py`: evaluation, {data['dtype']}, median of"
        f" {data['rounds']} x {data['repeats_per_round']} samples per method, torch"
        f" allocator: {data['allocator']}. Every output agrees with taylorc's to the"
        " relative difference shown.",
        "",
    ]
    configs = data["configs"]
    methods = list(next(iter(data["runs"].values())))
    head = " | ".join(
        f"{c} (D={v['D']}, {'-'.join(map(str, v['widths']))}, B={v['B']})"
        for c, v in configs.items()
    )
    lines += [f"| method | {head} |", "| --- |" + " --- |" * len(configs)]
    for m in methods:
        cells = []
        for c in configs:
            r = data["runs"][c][m]
            cells.append(
                f"{ms(r['median_s'])} ms (diff {r['max_rel_diff_vs_taylorc']:.0e})"
                if r.get("available")
                else "not installed"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Peer time over taylorc's best CPU path (above 1: taylorc is faster):", ""]
    peers = ["folx", "jax/hessian-trace", "jet/eager", "jet/compile", "nested"]
    lines += [
        "| config | best taylorc path | " + " | ".join(peers) + " |",
        "| --- | --- |" + " --- |" * len(peers),
    ]
    for c, s in data["summary"].items():
        cells = [ratio(s.get(f"{p}_over_best_taylorc")) for p in peers]
        lines.append(f"| {c} | {s['best_taylorc_path']} | " + " | ".join(cells) + " |")
    return lines + ["", f"![CPU Laplacian against the peers]({image})", ""]


def plot_peers(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(data["configs"])
    fig, axes = plt.subplots(1, len(configs), figsize=(5 * len(configs), 3.6))
    for ax, c in zip(axes if len(configs) > 1 else [axes], configs):
        runs = {m: r for m, r in data["runs"][c].items() if r.get("available")}
        names = list(runs)
        times = [1e3 * runs[m]["median_s"] for m in names]
        colors = ["tab:blue" if m.startswith("taylorc") else "tab:gray" for m in names]
        ax.barh(names, times, color=colors)
        ax.set_xlabel("ms per evaluation (median)")
        ax.set_title(f"{c}: D={data['configs'][c]['D']}, B={data['configs'][c]['B']}")
        ax.invert_yaxis()
    fig.suptitle(f"Laplacian on {data['device']}, {data['threads']} threads, {data['dtype']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def percent(x) -> str:
    return f"{100 * x:.0f}%" if x is not None else "—"


def laplacian_section(data: dict, source: str) -> list[str]:
    """``bench/laplacian.py``: eval and training step, time and peak memory per method,
    and (suite runs) each method's fraction of the measured GEMM floor and its speed-up
    over torch-jet."""
    floors = data.get("floors")
    lines = [
        f"## taylorc methods against nested autograd and torch-jet on `{data['device']}`"
        f" (`{source}`)",
        "",
        "`python bench/laplacian.py`: median time and peak memory of one call"
        f" ({data['dtype']}, {data['threads']} threads, allocator:"
        f" {data.get('allocator', 'glibc default')}).",
        "",
    ]
    if floors:
        lines += [
            f"Measured floors: GEMM {floors['gemm_flops_per_s'] / 1e9:.0f} GFLOP/s"
            f" ({floors['gemm_size']}^3), copy {floors['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s.",
            "",
        ]
    lines += [
        "| config / mode | method | time (ms) | peak memory (MiB) | vs nested | vs jet"
        " | vs jet/compile | of GEMM floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    runs = data["runs"]
    for key, r in runs.items():
        config, mode, method = key.split("/", 2)
        if not r.get("available"):
            lines.append(f"| {config} / {mode} | {method} | not installed | | | | | |")
            continue
        mem = r.get("peak_bytes")
        vs = [
            runs.get(f"{config}/{mode}/{peer}", {}).get("median_s")
            for peer in ("jet", "jet/compile")
        ]
        cells = [
            ms(r["median_s"]),
            f"{mem / 2**20:.1f}" if mem is not None else "—",
            ratio(r.get("speedup_vs_nested")),
            *(ratio(t / r["median_s"]) if t else "—" for t in vs),
            percent(r.get("fraction_of_gemm_floor")),
        ]
        lines.append(f"| {config} / {mode} | {method} | " + " | ".join(cells) + " |")
    return lines + [""]


def training_loop_section(data: dict, source: str) -> list[str]:
    """The longest step of a training loop on the default path (``bench/first_call.py --loop``)."""
    meta = data["meta"]
    lines = [
        f"## A training loop on the default path (`{source}`)",
        "",
        f"`python bench/first_call.py --loop`: {meta['steps']} steps, {meta['model']}, "
        f'{meta["dtype"]}, {meta["threads"]} thread; `backend="auto"` compiles after 10 calls. '
        "The second process shares the first's inductor cache directory.",
        "",
        "| compile | process | longest step (s) | at step | median step (ms) | total (s) | compile (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["runs"]:
        mode = "background" if r["background"] else "blocking the call"
        lines.append(
            f"| {mode} | {r['process']} | {r['max_s']:.2f} | {r['max_step']} | "
            f"{r['median_s'] * 1e3:.1f} | {r['total_s']:.0f} | {r['latency'].get('compile', 0):.1f} |"
        )
    return lines + [""]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(ROOT / "bench" / "results"))
    p.add_argument("--docs", default=str(ROOT / "docs"))
    args = p.parse_args(argv)
    results, docs = Path(args.results), Path(args.docs)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python bench/report.py` from `bench/results/*.json`; the"
        " benchmarks compare methods within one run (ratios), because timings on shared"
        " machines drift. No GPU results yet: no GPU was available to this project so far.",
        "",
    ]
    for f in sorted(results.glob("cpu-peers-*.json")):
        data = json.loads(f.read_text())
        image = f"img/benchmarks-{data['device']}.png"
        plot_peers(data, docs / image)
        lines += peers_section(data, image)
    for f in sorted(results.glob("laplacian-*.json")) + sorted(results.glob("suite-*.json")):
        lines += laplacian_section(json.loads(f.read_text()), f"bench/results/{f.name}")
    for f in sorted(results.glob("training-loop-*.json")):
        lines += training_loop_section(json.loads(f.read_text()), f"bench/results/{f.name}")
    notes = ROOT / "bench" / "notes.md"  # hand-kept measurements behind the passes
    if notes.exists():
        lines += ["", notes.read_text().rstrip(), ""]
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "benchmarks.md").write_text("\n".join(lines))
    print(f"written to {docs / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
