"""Family benchmarks on CPU: ALBERT, SqueezeBERT and BigBird, tandem vs HF transformers, both backends.

Each benchmark builds HF's model with random weights, loads the same weights into tandem (through an HF
checkpoint directory), then times one forward per implementation, interleaved round by round (the order
rotates) after untimed warm-up calls that include jit compilation. Reported: median and minimum wall ms and
the ratio of medians ours / HF (below 1.0: we are faster).

- ``albert``: albert-base-v2 size, batch 8, length 128, vs ``AlbertModel`` (sdpa) and jitted ``FlaxAlbertModel``.
- ``albert-compile``: flax compile time of the base model at 2 and 24 layers with one shared group.
- ``squeezebert``: squeezebert-uncased size, batch 8, length 128, vs ``SqueezeBertModel``; plus BERT-base in
  each backend, SqueezeBERT's reason to exist being speed.
- ``big_bird``: 2 layers of bigbird-roberta-base width, batch 1, block-sparse at lengths 1024 and 4096, vs
  ``BigBirdModel`` and jitted ``FlaxBigBirdModel``; peak RSS of a process doing one 4096 forward.

Run: ``python -m tandem.tools.bench_families albert squeezebert big_bird albert-compile [--json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .timing import interleaved


def _runners(hf_model: Any, hf_flax: Any, directory: Path, inputs: dict[str, np.ndarray]) -> dict[str, Callable]:
    import jax
    import torch

    import tandem

    ours_torch = tandem.from_pretrained(directory, backend="torch")
    ours_flax = tandem.from_pretrained(directory, backend="flax")
    pt_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}

    def run_torch(model: Any) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return model(**pt_inputs)

        return call

    runners = {"tandem torch": run_torch(ours_torch), "HF torch": run_torch(hf_model)}
    runners["tandem flax"] = lambda: jax.block_until_ready(ours_flax(**inputs).last_hidden_state)
    if hf_flax is not None:
        jitted = jax.jit(lambda params, ids, mask: hf_flax(ids, attention_mask=mask, params=params)[0])
        runners["HF flax"] = lambda: jax.block_until_ready(
            jitted(hf_flax.params, inputs["input_ids"], inputs["attention_mask"])
        )
    return runners


def _hf_pair(config_class: str, model_class: str, flax: bool, **config: Any) -> tuple[Any, Any, Path]:
    import torch
    import transformers

    torch.manual_seed(0)
    hf_config = getattr(transformers, config_class)(**config)
    model = getattr(transformers, model_class)(hf_config).eval()
    directory = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    model.save_pretrained(directory)
    hf_flax = None
    if flax:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf_flax = getattr(transformers, "Flax" + model_class).from_pretrained(directory, from_pt=True)
    return model, hf_flax, directory


def _batch(batch: int, length: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.ones((batch, length), np.int64)
    mask[1::2, length - length // 8 :] = 0
    return {"input_ids": rng.integers(5, vocab, (batch, length)), "attention_mask": mask}


def _ratios(times: dict[str, dict[str, float]]) -> dict[str, float]:
    out = {}
    for backend in ("torch", "flax"):
        ours, ref = times.get(f"tandem {backend}"), times.get(f"HF {backend}")
        if ours and ref:
            out[backend] = ours["median_ms"] / ref["median_ms"]
    return out


def bench_albert(rounds: int, warmup: int) -> dict[str, Any]:
    config = {
        "vocab_size": 30000,
        "embedding_size": 128,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
    }
    hf, hf_flax, directory = _hf_pair("AlbertConfig", "AlbertModel", True, **config)
    times = interleaved(_runners(hf, hf_flax, directory, _batch(8, 128, 30000)), rounds, warmup)
    return {"benchmark": "albert-base-v2 forward, batch 8, length 128", "times": times, "ratios": _ratios(times)}


def bench_albert_compile() -> dict[str, Any]:
    import jax

    import tandem

    out = {}
    inputs = _batch(2, 64, 1000)
    for layers in (2, 24):
        config = tandem.AlbertConfig(
            vocab_size=1000, embedding_size=64, hidden_size=256, num_attention_heads=4, intermediate_size=512,
            num_hidden_layers=layers, num_hidden_groups=1,
        )  # fmt: skip
        model = tandem.build(config, task="base", backend="flax")
        start = time.perf_counter()
        jax.block_until_ready(model(**inputs).last_hidden_state)
        out[f"{layers} layers"] = {"first_call_s": time.perf_counter() - start}
    return {"benchmark": "ALBERT flax compile (first call), one shared group", "times": out}


def bench_squeezebert(rounds: int, warmup: int) -> dict[str, Any]:
    hf, _, directory = _hf_pair("SqueezeBertConfig", "SqueezeBertModel", False)
    inputs = _batch(8, 128, 30522)
    runners = _runners(hf, None, directory, inputs)
    bert, bert_flax, bert_dir = _hf_pair("BertConfig", "BertModel", False)
    for name, fn in _runners(bert, bert_flax, bert_dir, inputs).items():
        if name.startswith("tandem"):
            runners[name.replace("tandem", "tandem BERT-base")] = fn
    times = interleaved(runners, rounds, warmup)
    ratios = _ratios(times)
    for backend in ("torch", "flax"):
        ratios[f"squeezebert / bert-base ({backend})"] = (
            times[f"tandem {backend}"]["median_ms"] / times[f"tandem BERT-base {backend}"]["median_ms"]
        )
    return {"benchmark": "squeezebert-uncased forward, batch 8, length 128", "times": times, "ratios": ratios}


_BIG_BIRD = {
    "vocab_size": 50358,
    "hidden_size": 768,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "num_hidden_layers": 2,
    "max_position_embeddings": 4096,
    "attention_type": "block_sparse",
    "block_size": 64,
    "num_random_blocks": 3,
}


def bench_big_bird(rounds: int, warmup: int) -> dict[str, Any]:
    hf, hf_flax, directory = _hf_pair("BigBirdConfig", "BigBirdModel", True, **_BIG_BIRD)
    report: dict[str, Any] = {"benchmark": "BigBird 2 layers (bigbird-roberta-base width), batch 1, block-sparse"}
    for length in (1024, 4096):
        batch = _batch(1, length, 50358)
        batch["attention_mask"][:] = 1  # HF Flax's block-sparse path
        times = interleaved(_runners(hf, hf_flax, directory, batch), rounds, warmup)
        report[f"length {length}"] = {"times": times, "ratios": _ratios(times)}
    growth = {
        name: report["length 4096"]["times"][name]["median_ms"] / report["length 1024"]["times"][name]["median_ms"]
        for name in report["length 4096"]["times"]
    }
    report["growth 1024 -> 4096"] = growth
    report["peak RSS MB at 4096 (whole process)"] = {
        name: _peak_rss(directory, name) for name in ("tandem torch", "HF torch", "tandem flax", "HF flax")
    }
    return report


def _peak_rss(directory: Path, implementation: str) -> float:
    """Peak RSS (MB) of a fresh process that loads only ``implementation`` and runs one length-4096 forward.

    Read from ``VmHWM`` in ``/proc/self/status``: the high-water mark of the process's own memory map.
    (``ru_maxrss`` would report this big parent's RSS: Linux carries it into a forked child across exec.)"""
    load = {
        "tandem torch": "m = tandem.from_pretrained(d, backend='torch')\nwith torch.inference_mode(): m(**pt)",
        "HF torch": "m = transformers.BigBirdModel.from_pretrained(d).eval()\nwith torch.inference_mode(): m(**pt)",
        "tandem flax": "m = tandem.from_pretrained(d, backend='flax')\njax.block_until_ready(m(**b).last_hidden_state)",
        "HF flax": "m = transformers.FlaxBigBirdModel.from_pretrained(d, from_pt=True)\n"
        "jax.block_until_ready(jax.jit(lambda p, i, a: m(i, attention_mask=a, params=p)[0])"
        "(m.params, b['input_ids'], b['attention_mask']))",
    }[implementation]
    code = (
        "import warnings\nwarnings.simplefilter('ignore')\n"
        "import jax, torch, transformers, tandem\n"
        "from tandem.tools.bench_families import _batch, _vm_hwm_mb\n"
        f"d = {str(directory)!r}\nb = _batch(1, 4096, 50358)\nb['attention_mask'][:] = 1\n"
        "pt = {k: torch.from_numpy(v) for k, v in b.items()}\n"
        f"{load}\nprint(_vm_hwm_mb())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"peak-RSS run of {implementation} failed:\n{result.stderr[-2000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def _vm_hwm_mb() -> float:
    """This process's peak resident set size in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (peak RSS is measured on Linux only)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="+", choices=["albert", "albert-compile", "squeezebert", "big_bird"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    reports = []
    for which in args.which:
        if which == "albert":
            reports.append(bench_albert(args.rounds, args.warmup))
        elif which == "albert-compile":
            reports.append(bench_albert_compile())
        elif which == "squeezebert":
            reports.append(bench_squeezebert(args.rounds, args.warmup))
        else:
            reports.append(bench_big_bird(args.rounds, args.warmup))
        if not args.json:
            print(json.dumps(reports[-1], indent=2))
    if args.json:
        print(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
