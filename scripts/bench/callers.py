"""callers.py PROFILE NAME [N]: who calls the functions whose name contains NAME in a callgrind
profile, how often and at what inclusive cost, per request when N (the requests counted) is
given; the 40 costliest call sites. E.g. the clock reads of a 429:
    scripts/bench/callers.py /tmp/rampart-callgrind.out.1 'Timespec>::now' 700"""
import sys, re, collections
f, sub = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 1
names = {}
cur = None; target = None
calls = collections.Counter(); incl = collections.Counter()
lines = open(f, errors="replace").read().split("\n")
def name(tok):
    m = re.match(r"\((\d+)\)(?: (.*))?", tok)
    if not m: return tok
    i, nm = m.group(1), m.group(2)
    if nm: names[i] = nm
    return names.get(i, i)
i = 0
while i < len(lines):
    l = lines[i]
    if l.startswith("fn="):
        cur = name(l[3:])
    elif l.startswith("cfn="):
        target = name(l[4:])
    elif l.startswith("calls=") and target is not None:
        c = int(l[6:].split()[0])
        cost = lines[i+1].split()
        if sub in target:
            calls[(cur, target)] += c
            incl[(cur, target)] += int(cost[1]) if len(cost) > 1 else 0
        target = None
    i += 1
tot = 0
for (caller, t), c in sorted(calls.items(), key=lambda kv: -incl[kv[0]])[:40]:
    print(f"{c/n:8.2f} calls {incl[(caller,t)]/n:9.0f} Ir  {caller[:110]}  ->  {t[:60]}")
    tot += c
print("total calls per req", sum(calls.values())/n)
