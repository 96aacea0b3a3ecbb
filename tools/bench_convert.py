"""Checkpoint conversion of a bert-base-size checkpoint: ``tandem convert`` vs HF's own, time and peak memory.

The checkpoint is HF ``BertForMaskedLM`` with the default config (bert-base: 110M parameters, 438 MB of
float32 safetensors), randomly initialised once under a fixed seed and saved into ``--dir``. Measured:

- tandem torch -> flax: ``convert(pt, out, to="flax")``, ``model.safetensors`` -> ``flax_model.msgpack``
- tandem flax -> torch: ``flax_model.msgpack`` -> ``model.safetensors``
- HF torch -> flax: ``FlaxBertForMaskedLM.from_pretrained(pt, from_pt=True).save_pretrained(out)``
- HF flax -> torch: ``load_flax_checkpoint_in_pytorch_model(BertForMaskedLM(config), msgpack)``, then
  ``save_pretrained(out)`` (``from_pretrained(from_flax=True)`` runs the same loader, but in transformers
  4.57 it leaves the parameters on the meta device and cannot be saved)

Each run is a fresh process (so its peak RSS is that conversion's own, imports included), started after
``os.sync()`` (so the disk is not still writing the previous run's output) and writing into a new
directory. Reported per conversion: the median and minimum seconds of the conversion call (imports
excluded), the process wall time, the process's peak RSS (``ru_maxrss``: resident memory, the pages of the
memory-mapped source included) and that peak over the checkpoint size, and the peak after imports. Linux
only (the peak is read from ``/proc/self/status``).

Run it with ``python -m tandem.tools.bench_convert`` (``--no-hf`` skips HF, which takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_MAKE_CHECKPOINT = """
import torch, transformers
torch.manual_seed(0)
transformers.BertForMaskedLM(transformers.BertConfig()).save_pretrained({out!r})
"""

# Child processes: import, then convert, then report what they measured as one JSON line. The peak is the
# kernel's VmHWM, which starts afresh at exec (ru_maxrss would carry over the parent's peak).
_CHILD = """
import json, re, time
def peak():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024
start = time.perf_counter()
{imports}
imported = time.perf_counter()
baseline = peak()
{convert}
done = time.perf_counter()
print(json.dumps({{"seconds": done - imported, "import_seconds": imported - start,
                  "peak_bytes": peak(), "import_peak_bytes": baseline}}))
"""
_TANDEM = ("from tandem.tools.convert import convert", "convert({src!r}, {out!r}, to={to!r})")
_CASES: dict[str, tuple[str, str, str, str]] = {
    # name: (imports, conversion, source folder, to)
    "tandem torch->flax": (*_TANDEM, "pt", "flax"),
    "tandem flax->torch": (*_TANDEM, "flax", "torch"),
    "HF torch->flax": (
        "import transformers",
        "transformers.FlaxBertForMaskedLM.from_pretrained({src!r}, from_pt=True).save_pretrained({out!r})",
        "pt",
        "flax",
    ),
    # HF's own flax -> torch loader, as from_pretrained(from_flax=True) would run it: in transformers 4.57
    # that path leaves every parameter on the meta device, so the model is built and loaded explicitly.
    "HF flax->torch": (
        "import transformers\n"
        "from transformers.modeling_flax_pytorch_utils import load_flax_checkpoint_in_pytorch_model",
        "model = transformers.BertForMaskedLM(transformers.BertConfig.from_pretrained({src!r}))\n"
        "load_flax_checkpoint_in_pytorch_model(model, {src!r} + '/flax_model.msgpack')\n"
        "model.save_pretrained({out!r})",
        "flax",
        "torch",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "tandem-bench-convert"))
    parser.add_argument("--repeats", type=int, default=5, help="runs of each tandem conversion (default 5)")
    parser.add_argument("--hf-repeats", type=int, default=1, help="runs of each HF conversion (default 1)")
    parser.add_argument("--no-hf", action="store_true", help="measure tandem only")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of the table")


def _checkpoint(directory: Path) -> Path:
    """The bert-base MLM checkpoint (made once) and its flax conversion, in ``directory``."""
    pt = directory / "pt"
    if not (pt / "model.safetensors").is_file():
        subprocess.run([sys.executable, "-c", _MAKE_CHECKPOINT.format(out=str(pt))], check=True)
    if not (directory / "flax" / "flax_model.msgpack").is_file():
        from .convert import convert

        convert(pt, directory / "flax", to="flax")
    return pt / "model.safetensors"


def _run(case: str, directory: Path) -> dict[str, Any]:
    imports, conversion, source, to = _CASES[case]
    out = directory / "out"
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    time.sleep(1.0)
    code = _CHILD.format(imports=imports, convert=conversion.format(src=str(directory / source), out=str(out), to=to))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{case} failed:\n{done.stderr[-3000:]}")
    shutil.rmtree(out)
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process_seconds": wall}


def run(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    size = _checkpoint(directory).stat().st_size
    results: dict[str, dict[str, Any]] = {}
    for case in _CASES:
        repeats = args.repeats if case.startswith("tandem") else args.hf_repeats
        if repeats < 1 or (args.no_hf and not case.startswith("tandem")):
            continue
        runs = [_run(case, directory) for _ in range(repeats)]
        peak = max(r["peak_bytes"] for r in runs)
        results[case] = {
            "runs": repeats,
            "median_s": statistics.median(r["seconds"] for r in runs),
            "min_s": min(r["seconds"] for r in runs),
            "process_s": statistics.median(r["process_seconds"] for r in runs),
            "peak_mb": peak / 1e6,
            "peak_over_checkpoint": peak / size,
            "import_peak_mb": max(r["import_peak_bytes"] for r in runs) / 1e6,
        }
        if not args.json:
            print(f"  measured {case}", file=sys.stderr)
    if args.json:
        print(json.dumps({"checkpoint_mb": size / 1e6, "results": results}, indent=2))
    else:
        print(_table(results, size))
    return 0


def _table(results: dict[str, dict[str, Any]], size: int) -> str:
    header = ("conversion", "runs", "median s", "min s", "process s", "peak MB", "peak/ckpt", "after imports MB")
    rows = [
        (
            case,
            str(r["runs"]),
            f"{r['median_s']:.2f}",
            f"{r['min_s']:.2f}",
            f"{r['process_s']:.2f}",
            f"{r['peak_mb']:.0f}",
            f"{r['peak_over_checkpoint']:.2f}x",
            f"{r['import_peak_mb']:.0f}",
        )
        for case, r in results.items()
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        for row in (header, *rows)
    ]
    lines.append(f"checkpoint: bert-base BertForMaskedLM, {size / 1e6:.0f} MB of float32 safetensors")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_convert", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
