"""Write profiler/evalset/qa.json: grounded questions generated from labels.json (see varipipe.profiler.qa).

Deterministic (a seeded generator per photo); rerunning it rewrites the same file. ``--check``
compares instead of writing (exit 1 when qa.json differs from what labels.json gives).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from varipipe.profiler.qa import QA_FILE, SEED, generate, load_supercategories, qa_document

EVALSET = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--evalset", type=Path, default=EVALSET, help="the set's folder (default: this one)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"generator seed (default {SEED})")
    parser.add_argument("--check", action="store_true", help="compare with qa.json instead of writing it")
    args = parser.parse_args(argv)
    labels = json.loads((args.evalset / "labels.json").read_text(encoding="utf-8"))
    doc = qa_document(generate(labels, load_supercategories(args.evalset / "coco_supercategories.json"),
                               args.seed), args.seed)
    text = json.dumps(doc, indent=1) + "\n"
    target = args.evalset / QA_FILE
    if args.check:
        same = target.exists() and target.read_text(encoding="utf-8") == text
        print(f"{target}: {'up to date' if same else 'differs from what labels.json gives'}")
        return 0 if same else 1
    target.write_text(text, encoding="utf-8")
    print(f"wrote {target}: {json.dumps(doc['counts'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
