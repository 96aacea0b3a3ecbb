"""Greedy decoding speed: tandem (torch, flax) vs HF PyTorch ``generate``, with and without a KV cache.

What is timed: ``tandem.generate`` in each backend and HF ``BertLMHeadModel.generate`` (its default sdpa
attention), all greedy on the same random weights, producing ``--new-tokens`` tokens after an unpadded
prompt of ``--prompt`` tokens, at each ``--batch`` size, with ``use_cache`` on and off. One untimed warm-up
run per case (for flax it compiles the prompt and step programs), then ``--rounds`` timed runs; reported:
generated tokens per second (batch x new tokens / median seconds), the cached / uncached speed-up, and
ours / HF per backend (above 1.0: we are faster). It also reports whether all implementations produced the
same tokens.

Run it with ``python -m tandem.tools.bench_decode``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--prompt", type=int, default=8, help="prompt length (default 8)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per row (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per case (default 3)")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (default 256)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--intermediate", type=int, default=1024, help="feed-forward size (default 1024)")
    parser.add_argument("--vocab", type=int, default=30522, help="vocabulary size (default 30522)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and prompts (default 0)")
    parser.add_argument(
        "--threads", type=int, help="intra-op threads for torch and XLA (default: the frameworks' own choice)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")


def _set_threads(threads: int) -> None:
    """Pin torch and XLA to ``threads`` intra-op threads; XLA reads its flags when jax starts."""
    if threads < 1:
        raise ValueError(f"--threads must be at least 1, got {threads}")
    if "jax" in sys.modules:
        raise ValueError("--threads must be set before jax is imported")
    flags = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} intra_op_parallelism_threads={threads}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    import torch

    torch.set_num_threads(threads)


def _median_seconds(run: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    result = run()  # warm-up: compilation, allocator growth
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads is not None:
        _set_threads(args.threads)
    import tempfile

    import numpy as np
    import torch
    import transformers

    import tandem

    config = tandem.BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(512, args.prompt + args.new_tokens),
        is_decoder=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    models = {
        "torch": tandem.build(config, task="causal_lm", backend="torch", seed=args.seed),
        "flax": tandem.build(config, task="causal_lm", backend="flax", seed=args.seed),
    }
    with tempfile.TemporaryDirectory() as directory:
        tandem.save_pretrained(models["torch"], directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hf = transformers.BertLMHeadModel.from_pretrained(directory).eval()
    rng = np.random.default_rng(args.seed)
    rows = []
    for batch in args.batch:
        ids = rng.integers(1, args.vocab, size=(batch, args.prompt))
        mask = np.ones_like(ids)
        tokens: dict[str, np.ndarray] = {}
        for use_cache in (True, False):
            options = {"max_new_tokens": args.new_tokens, "use_cache": use_cache}
            cases: dict[str, Callable[[], Any]] = {
                "tandem torch": partial(tandem.generate, models["torch"], ids, mask, **options),
                "tandem flax": partial(tandem.generate, models["flax"], ids, mask, **options),
                "HF torch": partial(_hf_generate, hf, ids, mask, **options),
            }
            for name, case in cases.items():
                seconds, out = _median_seconds(case, args.rounds)
                tokens[f"{name} cache={use_cache}"] = np.asarray(out.numpy() if hasattr(out, "numpy") else out)
                rows.append(
                    {
                        "implementation": name,
                        "batch": batch,
                        "use_cache": use_cache,
                        "seconds": seconds,
                        "tokens_per_second": batch * args.new_tokens / seconds,
                    }
                )
        reference = next(iter(tokens.values()))
        for row in rows:
            if row["batch"] == batch:
                row["same_tokens"] = bool(
                    np.array_equal(tokens[f"{row['implementation']} cache={row['use_cache']}"], reference)
                )
    return {
        "model": {
            "layers": args.layers,
            "hidden": args.hidden,
            "heads": args.heads,
            "intermediate": args.intermediate,
            "vocab": args.vocab,
        },
        "prompt": args.prompt,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "machine": f"{platform.machine()}, torch threads {torch.get_num_threads()}",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "rows": rows,
    }


def _hf_generate(model: Any, ids: Any, mask: Any, max_new_tokens: int, use_cache: bool) -> Any:
    import torch

    with torch.inference_mode():
        return model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=use_cache,
            pad_token_id=0,
        )


def table(report: dict[str, Any]) -> str:
    """A markdown table: tokens/s, cached/uncached speed-up and ours/HF per row."""
    speed = {(r["implementation"], r["batch"], r["use_cache"]): r["tokens_per_second"] for r in report["rows"]}
    lines = [
        "| implementation | batch | cached tok/s | uncached tok/s | cached / uncached | cached vs HF | same tokens |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for (name, batch, use_cache), value in speed.items():
        if not use_cache:
            continue
        uncached = speed[(name, batch, False)]
        versus_hf = value / speed[("HF torch", batch, True)]
        same = all(r["same_tokens"] for r in report["rows"] if r["implementation"] == name and r["batch"] == batch)
        lines.append(
            f"| {name} | {batch} | {value:,.0f} | {uncached:,.0f} | {value / uncached:.1f}x | {versus_hf:.2f}x | "
            f"{'yes' if same else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    model = report["model"]
    print(
        f"BERT decoder: {model['layers']} layers, hidden {model['hidden']}, {model['heads']} heads, "
        f"FFN {model['intermediate']}, vocab {model['vocab']}; prompt {report['prompt']}, "
        f"{report['new_tokens']} new tokens, greedy; median of {report['rounds']} runs; {report['machine']}"
    )
    print(table(report))


if __name__ == "__main__":
    main()
