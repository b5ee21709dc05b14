"""Derive the LLM variants' transformers configs from their GGUF metadata and commit them.

The GGUF files (98 MB, 253 MB, 491 MB) cannot travel to a GPU host that runs from
source with 64 MiB of files, but their *architectures* can: this reads each
GGUF's metadata with transformers (through the ``gguf`` package, the same code
that loads the weights) and writes the config into
``pipelines/variants/data/llm_arch/<model>.json``. ``llm_torch`` builds the
random-weights model from it, and the GPU profile times that model.

    python benchmarks/llm_arch_configs.py [--check] [MODEL ...]

``--check`` rebuilds each config from the GGUF and compares it with the committed
one, and compares the parameter count of a model built from it with the
dequantised GGUF model's (both on the CPU; a minute or two).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from varipipe.pipelines.models import model_files  # noqa: E402
from varipipe.pipelines.variants.llm_torch import arch_config, arch_config_path  # noqa: E402

MODELS = ("smollm2-135m-instruct-q4_1", "gemma3-270m-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m")
# Keys of a config that name the file or the library rather than the architecture.
_DROP = ("_name_or_path", "_model_name_or_path", "transformers_version", "quantization_config", "dtype",
         "torch_dtype")


def derive(model: str) -> dict:
    from transformers import AutoConfig

    path = model_files(model).weights
    cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name).to_dict()
    return {
        "model": model,
        "source": f"GGUF metadata of {path.name}",
        "derived_with": {"transformers": metadata.version("transformers"), "gguf": metadata.version("gguf"),
                         "command": "python benchmarks/llm_arch_configs.py"},
        "config": {k: v for k, v in sorted(cfg.items()) if k not in _DROP},
    }


def _parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def check(model: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    committed = json.loads(arch_config_path(model).read_text(encoding="utf-8"))
    fresh = derive(model)
    assert json.loads(json.dumps(fresh["config"])) == committed["config"], f"{model}: committed config differs"
    with torch.device("meta"):
        random = AutoModelForCausalLM.from_config(arch_config(model))
    path = model_files(model).weights
    real = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    print(f"{model}: {type(random).__name__} {_parameters(random):,} parameters from the config, "
          f"{type(real).__name__} {_parameters(real):,} from the GGUF")
    assert _parameters(random) == _parameters(real)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare the committed configs with the GGUF files")
    parser.add_argument("models", nargs="*", default=list(MODELS), choices=MODELS, metavar="MODEL",
                        help=f"only these (default: all of {', '.join(MODELS)})")
    args = parser.parse_args()
    for model in args.models:
        if args.check:
            check(model)
            continue
        target = arch_config_path(model)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(derive(model), indent=1) + "\n", encoding="utf-8")
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
