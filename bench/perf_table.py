"""Side-by-side table of two perf profiles, in CPU microseconds per request.

Usage: perf_table.py TOP FILE:NAME:BINARY:REQUESTS FILE:NAME:BINARY:REQUESTS
Each FILE is a `perf record -e cpu-clock` recording of one proxy (its
executable's file name: BINARY) serving REQUESTS requests. Self time per symbol comes from `perf report`, summed
over the samples' periods (nanoseconds of CPU for cpu-clock), and is
divided by the requests: figures from the two profiles compare directly
even when the runs served different numbers of requests. Prints markdown:
the split into kernel, the proxy's own binary, libc and the rest, then the
kernel symbols that differ most and each proxy's top user-space symbols.
"""
import subprocess
import sys
from collections import defaultdict

KERNEL = "[kernel.kallsyms]"


def load(path):
    """{(dso, symbol): nanoseconds} from one perf.data file."""
    out = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "-g", "none", "--sort", "dso,sym",
         "-F", "period,dso,sym", "--field-separator", "\t", "--stdio"],
        capture_output=True, text=True, check=True).stdout
    cost = defaultdict(int)
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        sym = parts[2]
        if sym[:4] in ("[k] ", "[.] "):
            sym = sym[4:]
        cost[(parts[1], sym)] += int(parts[0])
    return cost


def part(dso, binary):
    if dso == KERNEL:
        return "kernel"
    if dso == binary:
        return "own binary"
    if dso.startswith("libc.so") or dso.startswith("libc-"):
        return "libc"
    return "other user space"


def main():
    top = int(sys.argv[1])
    runs = []
    for spec in sys.argv[2:4]:
        path, name, binary, requests = spec.rsplit(":", 3)
        runs.append((name, binary, load(path), int(requests)))
    per_req = [{k: ns / 1000 / n for k, ns in cost.items()} for _, _, cost, n in runs]
    names = [run[0] for run in runs]
    binaries = [run[1] for run in runs]

    print(f"| µs of CPU per request | {names[0]} | {names[1]} |")
    print("|---|--:|--:|")
    print(f"| requests | {runs[0][3]:,} | {runs[1][3]:,} |")
    print(f"| all (sampled) | {sum(per_req[0].values()):.2f} | {sum(per_req[1].values()):.2f} |")
    for label in ("kernel", "own binary", "libc", "other user space"):
        vals = [sum(v for (dso, _), v in d.items() if part(dso, name) == label) for d, name in zip(per_req, binaries)]
        print(f"| {label} | {vals[0]:.2f} | {vals[1]:.2f} |")
    print()

    kernel = {sym for d in per_req for (dso, sym) in d if dso == KERNEL}
    rows = [(s, per_req[0].get((KERNEL, s), 0.0), per_req[1].get((KERNEL, s), 0.0)) for s in kernel]
    rows.sort(key=lambda r: -abs(r[2] - r[1]))
    print("Kernel symbols with the largest difference (self time, µs per request):")
    print()
    print(f"| symbol | {names[0]} | {names[1]} | {names[1]} − {names[0]} |")
    print("|---|--:|--:|--:|")
    for sym, a, b in rows[:top]:
        print(f"| `{sym}` | {a:.3f} | {b:.3f} | {b - a:+.3f} |")
    print()

    for name, d in zip(names, per_req):
        user = sorted(((v, dso, s) for (dso, s), v in d.items() if dso != KERNEL), reverse=True)
        print(f"{name}: top user-space symbols (self time, µs per request):")
        print()
        print("| symbol | where | µs/req |")
        print("|---|---|--:|")
        for v, dso, sym in user[:top]:
            print(f"| `{sym[:90]}` | {dso} | {v:.3f} |")
        print()


if __name__ == "__main__":
    main()
