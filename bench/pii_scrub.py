"""Benchmark the PII scrubber on tests/pii_corpus.jsonl.

Prints recall (PII snippets whose scrubbed text equals the expected text), the
false-alteration rate (ordinary sentences changed at all) and throughput in texts
per second, for scrub_pii alone and for the default Preprocessor pipeline, over the
corpus repeated to at least 50,000 texts.

    python bench/pii_scrub.py [--min-texts 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from emotrain.preprocessing import Preprocessor, scrub_pii  # noqa: E402

CORPUS = ROOT / "tests" / "pii_corpus.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--min-texts", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    args = ap.parse_args()

    rows = [json.loads(line) for line in args.corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    pii = [r for r in rows if r["text"] != r["expected"]]
    ordinary = [r for r in rows if r["text"] == r["expected"]]
    pipeline = Preprocessor()

    missed = [r for r in pii if pipeline(r["text"]) != r["expected"]]
    altered = [r for r in ordinary if pipeline(r["text"]) != r["text"]]
    print(f"corpus: {len(rows)} snippets ({len(pii)} with PII, {len(ordinary)} ordinary)")
    print(f"recall:            {1 - len(missed) / len(pii):7.2%}  ({len(pii) - len(missed)}/{len(pii)})")
    print(f"false alterations: {len(altered) / len(ordinary):7.2%}  ({len(altered)}/{len(ordinary)})")
    for r in missed:
        print(f"  missed:  {r['text']!r} -> {pipeline(r['text'])!r}")
    for r in altered:
        print(f"  altered: {r['text']!r} -> {pipeline(r['text'])!r}")

    texts = [r["text"] for r in rows]
    texts = texts * -(-args.min_texts // len(texts))
    for name, fn in (("scrub_pii", scrub_pii), ("Preprocessor()", pipeline)):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for t in texts:
                fn(t)
            best = min(best, time.perf_counter() - t0)
        print(f"{name:15s} {len(texts):,} texts in {best:.3f}s = {len(texts) / best:,.0f} texts/s")


if __name__ == "__main__":
    main()
