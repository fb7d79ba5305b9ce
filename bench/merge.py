#!/usr/bin/python3
"""merge.py — turns the raw JSON lines of one `bench/run.sh` run into bench/results.json.

Input: a file of JSON lines, each either
  - a line of bench_kernels / bench_transfer ({"name","value","unit","reference","ratio"}: kept,
    with "source" added), or
  - a line of bench_model ({"name": "<cfg>", ...}) or torch_bench.py ({"name": "torch_<cfg>", ...})
    tagged by run.sh with "source": "bench_model" / "torch_bench" and "pair": <run index>.
Model lines are paired by configuration: every run of a configuration (run.sh runs ours and
PyTorch's back to back, in the order ours, torch, torch, ours) contributes; "value" is the mean of
our runs' medians, "reference" the mean of PyTorch's, and "ratio" ours/theirs for throughputs
(img/s), theirs/ours for latencies (ms), so ratio > 1 means fedslim is ahead.
Output: a JSON list sorted as the input came (model entries first, in configuration order).

Usage: merge.py RAW.jsonl OUT.json
"""
import json
import sys


def fail(msg):
    sys.stderr.write("merge.py: %s\n" % msg)
    sys.exit(1)


def main(argv):
    if len(argv) != 3:
        fail("usage: merge.py RAW.jsonl OUT.json")
    rows = []
    with open(argv[1]) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                fail("%s:%d: not JSON (%s): %.80s" % (argv[1], n, e, line))
            if not isinstance(obj, dict) or "name" not in obj or "value" not in obj:
                fail("%s:%d: no name/value" % (argv[1], n))
            rows.append(obj)

    ours, theirs, order, other = {}, {}, [], []
    for r in rows:
        src = r.get("source")
        if src == "bench_model":
            if r["name"] not in ours:
                order.append(r["name"])
            ours.setdefault(r["name"], []).append(r)
        elif src == "torch_bench":
            name = r["name"][len("torch_"):] if r["name"].startswith("torch_") else r["name"]
            theirs.setdefault(name, []).append(r)
        else:
            other.append(r)

    out = []
    for name in order:
        a = ours[name]
        b = theirs.get(name, [])
        unit = a[0]["unit"]
        va = sum(x["value"] for x in a) / len(a)
        entry = {"name": name, "value": round(va, 4), "unit": unit, "reference": None,
                 "ratio": None, "peer": "PyTorch (torch_bench.py, same run)",
                 "clock": a[0].get("clock"), "runs": [x["value"] for x in a]}
        if b:
            vb = sum(x["value"] for x in b) / len(b)
            entry["reference"] = round(vb, 4)
            entry["reference_runs"] = [x["value"] for x in b]
            if va > 0 and vb > 0:
                entry["ratio"] = round(va / vb if unit != "ms" else vb / va, 4)
            if b[0].get("params") != a[0].get("params"):
                fail("%s: parameter counts differ (ours %s, PyTorch %s): not the same network"
                     % (name, a[0].get("params"), b[0].get("params")))
        out.append(entry)
    for r in other:
        e = {k: r.get(k) for k in ("name", "value", "unit", "reference", "ratio")}
        e["source"] = r.get("source")
        out.append(e)
    with open(argv[2], "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv)
