#!/usr/bin/env python3
"""Summarise a py-spy raw (collapsed stacks) profile: where the samples are, by function.

    .venv/bin/python benchmarks/bench.py --only drain --profile /tmp/drain.txt
    .venv/bin/python benchmarks/stacks.py /tmp/drain.txt [--top 40] [--match mqd/]

``self`` counts samples whose innermost frame is the function; ``total`` those where it is
anywhere on the stack (once per sample). Idle threads (waiting in epoll, a lock, a queue) are
dropped first, so the percentages are of the CPU the daemon actually used.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

IDLE = re.compile(r"\b(select|poll|epoll|_worker|wait|acquire|get)\b \(")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default="", help="only functions whose location has this")
    args = parser.parse_args()
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if IDLE.match(frames[-1]):
            continue
        count = int(count_text)
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    print(f"{samples} busy samples")
    for title, counter in (("self", own), ("total", total)):
        print(f"\n-- by {title} --")
        shown = 0
        for frame, count in counter.most_common():
            if args.match not in frame:
                continue
            print(f"{100 * count / max(1, samples):5.1f}%  {frame}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
