"""``make bench``: the quick benchmarks one after another, never two at once (``python -m bench.run
[NAME ...]`` runs some of them: paths, corpus, training, eval, serve)."""

from __future__ import annotations

import importlib
import sys
import time

QUICK = ("paths", "corpus", "training", "eval", "serve")


def main(argv: list[str]) -> int:
    names = argv or list(QUICK)
    unknown = [n for n in names if n not in QUICK]
    if unknown:
        print(f"unknown benchmarks {unknown}; choose from {list(QUICK)}", file=sys.stderr)
        return 2
    for name in names:
        started = time.perf_counter()
        importlib.import_module(f"bench.bench_{name}").main()
        print(f"({name}: {time.perf_counter() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
