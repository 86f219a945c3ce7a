#!/usr/bin/env python3
"""Measure the start-up of the `pvc` command: `pvc --help`, and `pvc vm list` with many VMs.

Fills one throwaway cluster per store engine (N ready nodes and M VMs with realistic libvirt XML,
exactly as benchmarks/bench_vms.py fills them), then times fresh processes, each run after one
unmeasured warm-up: `python -c pass` and `python -c "import click"` (the floor any Click program
pays), `pvc --help`, and per engine `pvc vm list` (the table) and `pvc vm list --format json`,
output to /dev/null, and their CPU time (user + system, which varies less than wall time on a busy
machine). Runs of all commands alternate (one run of each, then the next round), so a
busy patch of the machine spreads over all of them. It prints the median, p90 and min of the runs.
--compare DIR also runs every pvc command with the pvc package of another source tree (DIR/pvc,
put first on PYTHONPATH: an older checkout, say), alternating with this one, so the two columns
are measured under the same load. --profile adds, for each command, the slowest imports
(python -X importtime) and the top functions under cProfile.

Python compiles each module on import unless it finds its cached bytecode. An installed pvc has
it, so by default the commands run with a bytecode cache of their own (PYTHONPYCACHEPREFIX in the
temporary directory, filled by the warm-up; PYTHONDONTWRITEBYTECODE is dropped for them), which
also leaves the source tree untouched. --no-bytecode-cache runs them with this environment's own
settings instead.

Measured, not asserted (DESIGN.md, "Performance design"): this prints numbers and exits 0; it
fails only when something does not work at all. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

from common import (  # beside this script; it puts the repository on sys.path first
    ENGINES,
    PVC,
    Stores,
    command_env,
    engines,
    machine_line,
    percentile,
    quiet_logs,
)


#: XDG_CACHE_HOME of a command that must find no parsed-XML cache and can keep none (a file
#: cannot be made under /dev/null): every run parses every VM's XML, as a first run does.
COLD_CACHE = "/dev/null/pvc-bench-cli"


def environment(tmp: str, bytecode_cache: bool) -> dict[str, str]:
    env = command_env(tmp)
    # The CLI's parsed-XML cache of these runs (not the user's): the warm-up run fills it.
    env["XDG_CACHE_HOME"] = os.path.join(tmp, "cache")
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache")
    return env


def row(label: str, columns: list[list[tuple[float, float]]]) -> str:
    cells = []
    for samples in columns:
        wall, cpu = [w for w, _ in samples], [c for _, c in samples]
        cells.append(f"{statistics.median(wall):.1f} | {percentile(wall, 90):.1f} | {min(wall):.1f} | "
                     f"{statistics.median(cpu):.1f}")
    return f"| `{label}` | {len(columns[0])} | {' | '.join(cells)} |"


def run_once(args: list[str], env: dict[str, str], timeout: float = 600.0) -> tuple[float, float]:
    """Wall time and CPU time (user + system) in ms of one fresh process running ``args``, its
    output going to /dev/null. CPU time varies less than wall time on a busy machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
    elapsed = (time.perf_counter() - t0) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
    return elapsed, cpu


def measure(commands: list[tuple[str, list[str], bool]], envs: list[dict[str, str]],
            runs: int) -> dict[str, list[list[tuple[float, float]]]]:
    """Per command label, the (wall, CPU) samples of each environment (the first round only warms
    up). Commands marked False do not run pvc and are run in the first environment only; a label
    that says "first run" runs without the parsed-XML cache."""
    samples: dict[str, list[list[tuple[float, float]]]] = {label: [[] for _ in envs] for label, _, _ in commands}
    for i in range(runs + 1):
        for label, args, per_tree in commands:
            for j, env in enumerate(envs if per_tree else envs[:1]):
                measured = run_once(args, dict(env, XDG_CACHE_HOME=COLD_CACHE) if "first run" in label else env)
                if i:
                    samples[label][j].append(measured)
    return samples


def importtime(args: list[str], env: dict[str, str], top: int) -> list[str]:
    """The ``top`` slowest imports (cumulative µs, as -X importtime prints them) of one run."""
    python = os.path.join(os.path.dirname(PVC), "python")
    script = "import sys; sys.argv = ['pvc'] + sys.argv[1:]; from pvc.cli import main; main()"
    result = subprocess.run([python, "-X", "importtime", "-c", script, *args[1:]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600)
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:") and "|" in line]
    rows = []
    for line in lines[1:]:
        own, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        rows.append((int(cumulative), int(own), name))
    rows.sort(reverse=True)
    return [f"{c:>9} {o:>9}  {n}" for c, o, n in rows[:top]]


def cprofile(args: list[str], env: dict[str, str], top: int) -> list[str]:
    python = os.path.join(os.path.dirname(PVC), "python")
    script = ("import cProfile, pstats, sys, io\n"
              "sys.argv = ['pvc'] + sys.argv[1:]\n"
              "p = cProfile.Profile(); p.enable()\n"
              "try:\n    from pvc.cli import main; main()\n"
              "except SystemExit:\n    pass\n"
              "p.disable(); s = io.StringIO(); pstats.Stats(p, stream=s).sort_stats('cumulative').print_stats(%d)\n"
              "sys.stderr.write(s.getvalue())\n" % top)
    result = subprocess.run([python, "-c", script, *args[1:]], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=600)
    lines = result.stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if "function calls" in line), 0)
    return [line.rstrip() for line in lines[start:] if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--engine", choices=ENGINES, default="both")
    parser.add_argument("--zookeeper", metavar="HOST:PORT",
                        help="use this ZooKeeper (a fresh chroot) instead of starting a throwaway one")
    parser.add_argument("--vms", type=int, default=1000, help="VMs in each cluster")
    parser.add_argument("--nodes", type=int, default=3, help="nodes in each cluster")
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each command (after one warm-up)")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="run the commands with this environment's bytecode settings (see above)")
    parser.add_argument("--compare", metavar="DIR",
                        help="also run the pvc commands with DIR/pvc (another source tree), alternating")
    parser.add_argument("--profile", action="store_true",
                        help="also show the slowest imports and the top functions of each command")
    parser.add_argument("--top", type=int, default=25, help="lines shown by --profile")
    parser.add_argument("--seed", type=int, default=1, help="seed of the generated VMs")
    args = parser.parse_args(argv)
    if args.vms < 1 or args.nodes < 1 or args.runs < 1:
        parser.error("--vms, --nodes and --runs must be at least 1")
    if not os.path.exists(PVC):
        parser.error("the `pvc` console script is not installed (pip install -e .)")
    quiet_logs()
    from bench_vms import fill  # beside this script

    command = "python3 benchmarks/bench_cli.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    started = time.monotonic()
    python = os.path.join(os.path.dirname(PVC), "python")
    out: list[str] = []
    profiles: list[str] = []
    with tempfile.TemporaryDirectory(prefix="pvc-bench-cli-") as tmp, Stores(tmp, args.zookeeper) as stores:
        env = environment(tmp, not args.no_bytecode_cache)
        envs = [env]
        if args.compare:
            other = dict(env, PYTHONPATH=os.path.abspath(args.compare))
            if not args.no_bytecode_cache:
                other["PYTHONPYCACHEPREFIX"] = os.path.join(tmp, "pycache-compare")
            envs.append(other)
        commands: list[tuple[str, list[str], bool]] = [
            ("python -c pass", [python, "-c", "pass"], False),
            ("python -c 'import click'", [python, "-c", "import click"], False),
            ("pvc --help", [PVC, "--help"], True),
        ]
        for engine in engines(args.engine):
            print(f"[{engine}] filling {args.vms} VMs ...", file=sys.stderr, flush=True)
            setup = fill(stores, engine, args.vms, args.nodes, os.path.join(tmp, engine), args.seed)
            base = [PVC, "--config", setup.config, "vm", "list"]
            commands += [(f"pvc vm list  ({engine}, {args.vms:,} VMs)", base, True),
                         (f"pvc vm list, first run  ({engine}, {args.vms:,} VMs)", base, True),
                         (f"pvc vm list --format json  ({engine}, {args.vms:,} VMs)", base + ["--format", "json"], True)]
        print(f"{args.runs} rounds of {len(commands)} commands ...", file=sys.stderr, flush=True)
        samples = measure(commands, envs, args.runs)
        for label, _, per_tree in commands:
            columns = samples[label] if per_tree else samples[label][:1] * len(envs)
            out.append(row(label, columns))
        if args.profile:
            for label, argv_, per_tree in commands:
                if not per_tree:
                    continue
                profiles += [f"\n### `{label}`: slowest imports (cumulative µs, own µs)\n", "```"]
                profiles += importtime(argv_, env, args.top) + ["```"]
                if "vm list" in label and "json" not in label:
                    profiles += [f"\n### `{label}`: cProfile, by cumulative time\n", "```"]
                    profiles += cprofile(argv_, env, args.top) + ["```"]

    cache = "own bytecode cache" if not args.no_bytecode_cache else "this environment's bytecode settings"
    print(f"\npvc CLI start-up: {machine_line()}; {cache}")
    print(f"command: `{command}` ({time.monotonic() - started:.0f} s)\n")
    trees = ["this tree"] + ([f"`{args.compare}`"] if args.compare else [])
    if args.compare:
        print(f"Two columns: this tree, then {trees[1]} (alternating runs; python figures are shared).\n")
    print("| command (fresh process) | runs | "
          + " | ".join("median ms | p90 ms | min ms | median CPU ms" for _ in trees) + " |")
    print("|---|---:|" + "---:|---:|---:|---:|" * len(trees))
    print("\n".join(out + profiles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
