"""The last lines of a bench/gpu run: marvel's and PyTorch's timings side by side, and the check count."""

import json
import sys

marvel = json.load(open(sys.argv[1])) if len(sys.argv) > 1 else {"checks": [], "timings": []}
try:
    torch = json.load(open(sys.argv[2]))["timings"]
except (IndexError, OSError, ValueError):
    torch = []
failed = [c for c in marvel["checks"] if not c["passed"]]
print(f"\nchecks: {len(marvel['checks']) - len(failed)} passed, {len(failed)} failed" + "".join(f"\n  FAIL {c['name']}" for c in failed))
print(f"{'':<42} {'marvel':>10} {'torch':>10} {'ratio':>6}  unit")
for t in marvel["timings"]:
    other = next((o for o in torch if o["name"] == t["name"] and o["note"] == t["note"]), None)
    key = f"{t['name']} ({t['note'].split(',')[1].strip()})" if t["unit"] == "img/s" else t["name"]
    ratio = f"{t['value'] / other['value']:.2f}" if other else "-"
    print(f"{key:<42} {t['value']:>10.2f} {other['value'] if other else float('nan'):>10.2f} {ratio:>6}  {t['unit']}")
