#!/usr/bin/env python3
"""Summarises the per-frame traces `ryze-load` writes with RYZE_LOAD_TRACE=PATH.

Each `PATH.<pid>` file holds one line per stamped frame: `<publish stamp µs> <receive µs>`.
Frames of one event share its stamp. Prints, per event in publish order, how long its last
client waited, then the latency quantiles with and without the first N events.

    RYZE_LOAD_TRACE=/tmp/trace target/release/ryze-bench --only sparse
    scripts/trace-summary.py /tmp/trace [N]
"""
import collections
import glob
import sys


def quantile(sorted_values, q):
    return sorted_values[int(q * (len(sorted_values) - 1))] / 1000


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    skip = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    events = collections.defaultdict(list)
    for path in glob.glob(sys.argv[1] + ".*"):
        with open(path) as f:
            for line in f:
                sent, received = map(int, line.split())
                events[sent].append(received - sent)
    stamps = sorted(events)
    if not stamps:
        sys.exit("no trace files at " + sys.argv[1] + ".*")
    print("events:", len(stamps), "frames:", sum(len(v) for v in events.values()))
    print("last client's wait per event, ms:")
    print(" ".join("%d" % (max(events[s]) / 1000) for s in stamps))
    for label, chosen in (("all events", stamps), ("without the first %d" % skip, stamps[skip:])):
        values = sorted(v for s in chosen for v in events[s])
        if values:
            print("%s: p50 %.1f · p99 %.1f · p99.9 %.1f · max %.1f ms" % (
                label, quantile(values, 0.5), quantile(values, 0.99),
                quantile(values, 0.999), values[-1] / 1000))


if __name__ == "__main__":
    main()
