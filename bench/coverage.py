"""Coverage on models nobody here wrote: surgery on timm, torchvision segmentation,
detection backbones (with their FPN) and video models, tabulated in docs/coverage.md, and
on diffusers, MONAI, HuggingFace transformers and kornia models from tiny configs (source
``libraries``), tabulated apart in docs/coverage-libraries.md.

Every model is analysed (its parameter count must be exact), then 30 % of every free
dimension's BatchNorm γ are zeroed and ``prune``, ``nr``, ``cr`` and ``ca`` (rescaled)
must compute the same function in float64, or refuse with an ``FxSurgeonError``
naming the cause, for each of ``--draws`` random dead sets (a scheme is "same" only
when it is for every draw) (``fxsurgeon/experiments/coverage.py`` does one model; ``tests/test_coverage.py``
asserts the same). Each model runs in its own process, so a crash, a timeout or
running out of memory costs only that model. timm contributes one model per
architecture family (the smallest), or every model with ``--full``.

    python bench/coverage.py                        # the sweep -> docs/coverage.md and .json
    python bench/coverage.py --source video --jobs 1
    python bench/coverage.py --source libraries     # -> docs/coverage-libraries.md and .json
    python bench/coverage.py --only resnet,vit      # models whose name contains a pattern
    python bench/coverage.py --only volo --draws 5  # five dead sets per model
    python bench/coverage.py --full                 # every timm model (many hours)
    python bench/coverage.py --frontend export --only levit --out docs/coverage-export.md
    python bench/coverage.py --resume               # go on where an interrupted sweep stopped
    python bench/coverage.py --families             # recompute fxsurgeon.experiments.coverage.TIMM_FAMILIES
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fxsurgeon, whatever the environment installed

from fxsurgeon.analysis.graph import FRONTENDS  # noqa: E402 - importable only now
from fxsurgeon.experiments import coverage  # noqa: E402
from fxsurgeon.experiments.coverage import SCHEMES, SOURCES  # noqa: E402

#: the sources of docs/coverage.md; ``libraries`` (minutes, not hours, and moving with their
#: pins) has its own page, regenerated apart, that docs/coverage.md links to
VISION = [s for s in SOURCES if s != "libraries"]
LIBRARIES_PAGE = "coverage-libraries.md"


def _worker(spec: str, args) -> None:
    """Check one model (``source:name``) and print its record as the last line."""
    import torch
    torch.set_num_threads(int(os.environ.get("COVERAGE_THREADS", "1")))
    source, name = spec.split(":", 1)
    record = coverage.check(source, name, args.max_params, args.device, args.frontend, args.draws)
    record["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps(record))


def _run(spec: str, args) -> dict:
    """One model's record from a fresh process; a crash or timeout becomes the record."""
    source, name = spec.split(":", 1)
    cmd = [sys.executable, __file__, "--worker", spec, "--max-params", str(args.max_params),
           "--device", args.device, "--frontend", args.frontend, "--draws", str(args.draws)]
    env = dict(os.environ, COVERAGE_THREADS=str(max(1, (os.cpu_count() or 1) // args.jobs)))
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"model": name, "source": source, "error": f"timed out after {args.timeout} s",
                "seconds": args.timeout}
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    why = "killed (out of memory?)" if done.returncode == -9 else f"exit status {done.returncode}"
    return {"model": name, "source": source, "error": f"{why}: {done.stderr.strip()[-2000:]}",
            "seconds": round(time.perf_counter() - start, 1)}


def kind(outcome: str) -> str:
    """An outcome's category: its first word(s), such as same, refused or CRASH."""
    return re.match(r"WRONG \w+|\w+", outcome).group()


def judged_line(traced: list[dict]) -> str:
    """How many free channels a judge sees, before and with gates (issue: at least 95 %)."""
    free = [r for r in traced if r.get("free")]
    low = [r["model"] for r in free if r.get("gated", 0) < 0.95 * r["free"]]
    return (f"Judged: {sum(r.get('judged', 0) for r in free) / max(1, sum(r['free'] for r in free)):.1%} "
            f"of the free channels of the {len(free)} models with free channels have a norm that judges "
            f"them, {sum(r.get('gated', 0) for r in free) / max(1, sum(r['free'] for r in free)):.1%} "
            f"with gates; {len(low)} models have less than 95 % judged with gates"
            + (f" ({', '.join(low)})." if low else "."))


def status(r: dict) -> str:
    """A model's overall category for the counts: its worst outcome, or whether its
    ``same`` tested anything (no dead channel and no growth make the surgery a copy)."""
    if r.get("error"):
        return "harness error"
    if r.get("skipped"):
        return "skipped"
    if not r.get("traced"):
        return "not traceable"
    kinds = {kind(r[k]) for k in ("analysed", *SCHEMES, "gates") if k in r}
    for worst in ("CRASH", "CHANGED", "WRONG COUNT", "WRONG COST", "refused"):
        if worst in kinds:
            return worst
    return "all same" if r["removed"] or any(r["grown"].values()) else "no-op (nothing removed or added)"


def markdown(records: list[dict]) -> str:
    """docs/coverage.md: the counts, the table, and every distinct reason once, numbered."""
    notes: dict[str, int] = {}

    def noted(label: str, text: str) -> str:
        return f"{label} [{notes.setdefault(text, len(notes) + 1)}]"

    def cell(outcome: str | None) -> str:
        return "-" if outcome is None else outcome if outcome in ("same", "exact") else \
            noted(kind(outcome), outcome)

    def gated(r: dict) -> str:
        """The share of the free channels judged once gates are in, and why not the rest."""
        if not r.get("free") or "gated" not in r:
            return "-"
        share = f"{r['gated'] / r['free']:.0%}"
        reasons = sorted(set(r.get("unjudged", {}).values()))
        return share if not reasons else noted(share, "no gate: " + "; ".join(reasons))

    traced = [r for r in records if r.get("traced") and not r.get("error")]
    counts = Counter(status(r) for r in records)
    kinds = ("same", "refused", "CHANGED", "WRONG COST", "CRASH")
    lines = [
        "# Coverage: surgery on models nobody here wrote",
        "",
        "Generated by `python bench/coverage.py`, which says what is checked"
        + (f"; {max(r.get('draws', 1) for r in records)} draws of dead channels per model."
           if records else "."),
        f"{len(records)} models, {sum(r['seconds'] for r in records) / 60:.0f} min of checks: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".",
        f"Of the {len(traced)} traced models, {counts['refused']} "
        f"({counts['refused'] / max(1, len(traced)):.1%}) refuse some scheme (and nothing worse); "
        f"{counts['CRASH']} crash and {counts['CHANGED']} change the function silently.",
        judged_line(traced),
        *(["Front ends: " + ", ".join(f"{n} traced by torch.{f}" for f, n in sorted(
            Counter(r["frontend"] for r in traced if "frontend" in r).items())) + "."]
          if any("frontend" in r for r in traced) else []),
        "",
        "| scheme | " + " | ".join(kinds) + " |",
        "|---" * (1 + len(kinds)) + "|",
    ]
    for s in SCHEMES:
        c = Counter(kind(r[s]) for r in traced if s in r)
        lines.append(f"| {s} | " + " | ".join(str(c[k]) for k in kinds) + " |")
    lines += ["", "| model | source | params | traced | analysed | channels free / judged / removed | "
              + " | ".join(SCHEMES) + " | judged with gates | nr, gated | s |",
              "|---" * (9 + len(SCHEMES)) + "|"]
    for r in records:
        head = f"| {r['model']} | {r['source']} | {r.get('params', 0) / 1e6:.1f}M | "
        if r.get("error") or r.get("skipped") or not r.get("traced"):
            why = r.get("error") or r.get("skipped") or r["untraceable"]
            lines.append(head + noted(status(r), why.splitlines()[0]) + " |" * (6 + len(SCHEMES)))
            continue
        lines.append(head + f"{r['traced']} | {cell(r.get('analysed'))} | {r.get('free', '-')} / "
                     f"{r.get('judged', '-')} / {r.get('removed', '-')} | "
                     + " | ".join(cell(r.get(s)) for s in SCHEMES)
                     + f" | {gated(r)} | {cell(r.get('gates'))} | {r['seconds']:.0f} |")
    if not any(r["source"] == "libraries" for r in records):
        lines += ["", f"Models from diffusers, MONAI, HuggingFace transformers and kornia: [{LIBRARIES_PAGE}]"
                      f"({LIBRARIES_PAGE}) (`python bench/coverage.py --source libraries`)."]
    lines += ["", "## Reasons", ""] + [f"{n}. {text}" for text, n in notes.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=",".join(VISION),
                        help="comma-separated: " + ", ".join(SOURCES) + " (default all but libraries)")
    parser.add_argument("--only", help="comma-separated substrings: only models whose name has one")
    parser.add_argument("--full", action="store_true", help="every timm model, not one per family")
    parser.add_argument("--jobs", type=int, default=2, help="models checked at once (default 2)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per model (default 1800)")
    parser.add_argument("--max-params", type=int, default=coverage.MAX_PARAMS,
                        help="skip bigger models (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="where the models run (default cpu)")
    parser.add_argument("--frontend", default="auto", choices=FRONTENDS,
                        help="how models are traced: fx, export, or auto (fx, else export)")
    parser.add_argument("--draws", type=int, default=2,
                        help="dead sets drawn per model (seeds 0, 1, ...): same only if same for every one "
                             "(default 2)")
    parser.add_argument("--out", help="the table; the records go beside it as .json (default "
                                      f"docs/coverage.md, or docs/{LIBRARIES_PAGE} for --source libraries)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the models the .json beside --out already holds, check the rest")
    parser.add_argument("--families", action="store_true", help="print the smallest timm model per family")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args.worker, args)
    if args.families:
        return print(json.dumps(coverage.smallest_per_family(), indent=1))
    every = [f"{source}:{name}" for source in args.source.split(",")
             for name in coverage.models(source, args.full)]
    only = args.only.split(",") if args.only else None
    specs = [spec for spec in every if not only or any(p in spec.partition(":")[2] for p in only)]
    out = Path(args.out or ROOT / "docs" / (LIBRARIES_PAGE if args.source == "libraries" else "coverage.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = out.with_suffix(".json")
    records = {f"{r['source']}:{r['model']}": r for r in json.loads(saved.read_text())} \
        if args.resume and saved.exists() else {}
    todo = [spec for spec in specs if spec not in records]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(_run, spec, args): spec for spec in todo}
        for i, future in enumerate(as_completed(futures), 1):
            r = records[futures[future]] = future.result()
            print(f"[{i}/{len(todo)}] {futures[future]}: {status(r)}, {r['seconds']:.0f} s, "
                  f"{r.get('peak_mb', '?')} MB; " + " ".join(f"{s} {kind(r[s])}" for s in SCHEMES if s in r),
                  flush=True)
            _write(saved, json.dumps(list(records.values()), indent=1) + "\n")   # an interruption keeps these
    # the saved records of models --only leaves out stay: a rerun of one model keeps the sweep
    done = [records[spec] for spec in every if spec in records] + \
        [r for spec, r in records.items() if spec not in every]
    _write(saved, json.dumps(done, indent=1) + "\n")
    _write(out, markdown(done))
    print(f"{len(done)} models: {dict(Counter(status(r) for r in done))}; wrote {out} and {saved}")


def _write(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once (a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
