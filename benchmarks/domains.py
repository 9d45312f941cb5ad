#!/usr/bin/env python3
"""Domain-suffix lookup (what the engine uses) against an anchored pyahocorasick automaton.

    python benchmarks/domains.py [--domains 100000]

Both implement the same semantics: an entry blocks itself and its subdomains,
on label boundaries only.  Prints lookups/s, agreement, and build time/memory.
"""

import argparse
import random
import string
import sys
import time
import tracemalloc
from pathlib import Path

import ahocorasick

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from inspector.detect.domains import DomainMatcher


def aho_matcher(domains):
    automaton = ahocorasick.Automaton()
    for d in domains:
        automaton.add_word(d[::-1], d)  # reversed: a rule is a prefix of the reversed name
    automaton.make_automaton()

    def match(name):
        text = name[::-1] + "."
        for end, rule in automaton.iter(text):
            if end == len(rule) - 1 and text[end + 1] == ".":  # anchored at the end, on a label boundary
                return rule
        return None
    return match


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--domains", type=int, default=100_000)
    ap.add_argument("--lookups", type=int, default=200_000)
    args = ap.parse_args()
    rng = random.Random(3)
    words = set()
    while len(words) < args.domains:
        word = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(5, 12)))
        words.add(word + rng.choice((".com", ".net", ".org")))
    domains = sorted(words)
    picks = rng.choices(domains, k=args.lookups // 2)
    queries = [f"mx{i % 7}.{d}" for i, d in enumerate(picks)]
    queries += ["".join(rng.choices(string.ascii_lowercase, k=9)) + ".example.com" for _ in range(args.lookups // 2)]
    queries += ["not" + d for d in picks[:1000]] + [d + ".evil.test" for d in picks[:1000]]

    tracemalloc.start()
    t = time.perf_counter()
    suffix = DomainMatcher({d: 0 for d in domains})
    suffix_build = time.perf_counter() - t
    suffix_mem = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    tracemalloc.start()
    t = time.perf_counter()
    aho = aho_matcher(domains)
    aho_build = time.perf_counter() - t
    aho_mem = tracemalloc.get_traced_memory()[0]  # the automaton's own C memory is not traced
    tracemalloc.stop()

    results = {}
    for name, fn in (("suffix set", suffix.match), ("aho-corasick", aho)):
        best = 0.0
        for _ in range(3):
            t = time.perf_counter()
            out = [fn(q) for q in queries]
            best = max(best, len(queries) / (time.perf_counter() - t))
        results[name] = (best, out)
    agree = results["suffix set"][1] == results["aho-corasick"][1]
    hits = sum(1 for r in results["suffix set"][1] if r)
    print(f"{args.domains:,} rules, {len(queries):,} lookups ({hits:,} hits); results identical: {agree}")
    print(f"suffix set:   {results['suffix set'][0]:>12,.0f} lookups/s, build {suffix_build:.2f}s, "
          f"{suffix_mem / 1e6:.1f} MB (Python heap)")
    print(f"aho-corasick: {results['aho-corasick'][0]:>12,.0f} lookups/s, build {aho_build:.2f}s "
          f"(+ automaton memory outside the Python heap; {aho_mem / 1e6:.1f} MB traced)")
    print(f"ratio suffix/aho: {results['suffix set'][0] / results['aho-corasick'][0]:.2f}x")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
