#!/usr/bin/env python3
"""Two callgrind profiles side by side: each function's own (exclusive) instructions per
request, largest differences first. For "where does Rampart spend what the floor does not",
or a before/after of one change.

    scripts/bench/cgdiff.py A.out B.out N [ROWS]
    e.g. scripts/bench/cgdiff.py /tmp/cg.floor.1 /tmp/cg.rampart.1 700

N is the number of counted requests in both (callgrind.sh's N). Prints per function: A, B,
B - A, sorted by B - A; ROWS (default 40) from each end. Reads `callgrind_annotate`'s table,
so names are as it prints them; a function inlined in one build and not in the other shows
up as a difference on both sides (compare callers with callers.py)."""
import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[[^\]]*\])?$")


def own_costs(profile, requests):
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=no", "--threshold=100", profile],
        capture_output=True, text=True, check=True,
    ).stdout
    costs = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            name = m.group(2)
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", "")) / requests
    return costs


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    a_path, b_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    a, b = own_costs(a_path, n), own_costs(b_path, n)
    names = sorted(set(a) | set(b), key=lambda k: b.get(k, 0) - a.get(k, 0), reverse=True)
    shown = names if len(names) <= 2 * rows else names[:rows] + [None] + names[-rows:]
    print(f"{'A':>8} {'B':>8} {'B - A':>8}  function (own instructions per request)")
    for name in shown:
        if name is None:
            print("     ...")
            continue
        x, y = a.get(name, 0), b.get(name, 0)
        print(f"{x:8.0f} {y:8.0f} {y - x:+8.0f}  {name[:150]}")


if __name__ == "__main__":
    main()
