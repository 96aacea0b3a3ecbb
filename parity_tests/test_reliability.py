"""Reliability: interrupted and failing writes, bad config.json files, bad arguments, and CLI failures.

Writes are interrupted for real: a subprocess writing a 32 MB checkpoint is stopped at a known point (after
a tensor, or after the first file moved into place) and killed with SIGKILL, SIGTERM or SIGINT; the test
then checks the destination file by file. Readers' checks of corrupt files live in test_io_validation.py.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tandem
from tandem.core import FAMILIES
from tandem.core.io import Deferred, _safetensors, _staging, read_checkpoint, write_checkpoint
from tandem.tools import parity
from tandem.tools.cli import main
from tandem.tools.convert import convert

SMALL = parity.small_config(FAMILIES["bert"])
OLD_CONFIG = b'{"checkpoint": "old"}'
NEW_CONFIG = b'{"checkpoint": "new"}'
OLD = {f"old.{i}.weight": np.full((64, 64), i, np.float32) for i in range(4)}
# What the subprocess writes: 32 tensors of 1 MB as flax msgpack, so the old safetensors must go.
NEW = {f"layer/{i}/kernel": np.full((256, 1024), i, np.float32) for i in range(32)}

WRITER = """
import os, signal, sys, time
import numpy as np
from tandem.core.io import write_checkpoint
dest, stop = sys.argv[1], sys.argv[2]
tensors = {f"layer/{i}/kernel": np.full((256, 1024), i, np.float32) for i in range(32)}

def pause():
    print("paused", flush=True)
    time.sleep(120)

def on_tensor(name, _size):
    if stop == "mid-write" and name == "layer/5/kernel":
        pause()

real_replace = os.replace

def replace(source, target):  # the moves of the commit
    real_replace(source, target)
    if stop == "mid-commit":
        pause()
    elif stop == "sigterm-in-commit":
        os.kill(os.getpid(), signal.SIGTERM)

os.replace = replace
write_checkpoint(dest, tensors, "msgpack", "flax", files={"config.json": b'{"checkpoint": "new"}'}, on_tensor=on_tensor)
print("done", flush=True)
"""


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _staging_folders(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".tandem-"))


def _old_checkpoint(directory: Path) -> dict[str, bytes]:
    write_checkpoint(directory, OLD, "safetensors", "torch", files={"config.json": OLD_CONFIG})
    return _files(directory)


def _assert_new(directory: Path) -> None:
    """``directory`` holds the complete new checkpoint and nothing of the old one."""
    assert sorted(_files(directory)) == ["config.json", "flax_model.msgpack"]
    assert (directory / "config.json").read_bytes() == NEW_CONFIG
    weights = read_checkpoint(directory)
    assert set(weights) == set(NEW)
    for name, value in NEW.items():
        np.testing.assert_array_equal(weights[name], value)


def _start_writer(directory: Path, stop: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(directory), stop], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    if stop in ("mid-write", "mid-commit"):
        assert process.stdout.readline() == "paused\n"
    return process


def _failing_write(directory: Path) -> None:
    """A write into ``directory`` that fails at its first tensor (after sweeping, as every write does)."""

    def disk_full() -> np.ndarray:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=str(directory)):
        write_checkpoint(directory, {"w": Deferred((2,), np.dtype(np.float32), disk_full)}, "safetensors", "torch")


# ------------------------------------------------------------------------------------ interrupted writes
def test_sigkill_mid_write_leaves_the_old_checkpoint_and_the_next_write_sweeps(tmp_path: Path) -> None:
    before = _old_checkpoint(tmp_path)
    writer = _start_writer(tmp_path, "mid-write")  # paused after 6 of 32 tensors
    (stage,) = _staging_folders(tmp_path)
    assert stage.startswith(f".tandem-{writer.pid}-")
    _failing_write(tmp_path)  # a write while that one is alive must leave its folder alone
    assert _staging_folders(tmp_path) == [stage]
    writer.kill()
    writer.wait()
    partial = (tmp_path / stage / "flax_model.msgpack").stat().st_size
    assert 0 < partial < sum(v.nbytes for v in NEW.values())
    assert _files(tmp_path) == before  # the old checkpoint, byte for byte
    _failing_write(tmp_path)  # even a failed write sweeps the dead writer's folder
    assert _staging_folders(tmp_path) == []
    assert _files(tmp_path) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_sigterm_and_sigint_remove_the_staging_folder(signum: int, tmp_path: Path) -> None:
    before = _old_checkpoint(tmp_path)
    writer = _start_writer(tmp_path, "mid-write")
    writer.send_signal(signum)
    assert writer.wait(timeout=30) == -signum  # the process still ends by the signal
    assert _staging_folders(tmp_path) == []
    assert _files(tmp_path) == before


def test_sigterm_during_the_moves_is_held_until_the_checkpoint_is_complete(tmp_path: Path) -> None:
    _old_checkpoint(tmp_path)
    writer = _start_writer(tmp_path, "sigterm-in-commit")  # SIGTERM right after the first file moved
    assert writer.wait(timeout=30) == -signal.SIGTERM
    assert _staging_folders(tmp_path) == []
    _assert_new(tmp_path)


def test_sigkill_during_the_moves_leaves_no_loadable_mix_and_is_finished_by_the_next_write(tmp_path: Path) -> None:
    _old_checkpoint(tmp_path)
    writer = _start_writer(tmp_path, "mid-commit")  # paused after the first file moved into place
    writer.kill()
    writer.wait()
    # Old weights removed, new ones in, config.json not yet: no loader accepts the directory meanwhile.
    assert sorted(_files(tmp_path)) == ["flax_model.msgpack"]
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        tandem.config_from_hf(tmp_path)
    _failing_write(tmp_path)  # the sweep finishes the dead write from its journal before failing itself
    assert _staging_folders(tmp_path) == []
    _assert_new(tmp_path)


def test_abandoned_folders_of_unknown_writers_are_swept_only_when_old(tmp_path: Path) -> None:
    before = _old_checkpoint(tmp_path)
    legacy, foreign = tmp_path / ".tandem-k2j4x9ab", tmp_path / ".tandem-1-otherhost-abcd1234"
    for folder in (legacy, foreign):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    _failing_write(tmp_path)
    assert _staging_folders(tmp_path) == sorted([legacy.name, foreign.name])  # could still be running
    hours_ago = os.stat(legacy).st_mtime - 2 * 3600
    for path in (legacy, legacy / "model.safetensors", foreign, foreign / "model.safetensors"):
        os.utime(path, (hours_ago, hours_ago))
    _failing_write(tmp_path)
    assert _staging_folders(tmp_path) == []
    assert _files(tmp_path) == before


def test_a_journal_naming_files_outside_the_destination_is_ignored(tmp_path: Path) -> None:
    destination = tmp_path / "checkpoint"
    before = _old_checkpoint(destination)
    (tmp_path / "victim").write_bytes(b"keep")
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = destination / f".tandem-{dead.pid}-{_staging._HOST}-abcd1234"
    folder.mkdir()
    (folder / ".commit.json").write_text(json.dumps({"files": ["config.json"], "remove": ["../victim"]}))
    (folder / "config.json").write_bytes(NEW_CONFIG)
    _failing_write(destination)
    assert _staging_folders(destination) == []
    assert (tmp_path / "victim").read_bytes() == b"keep"
    assert _files(destination) == before


# --------------------------------------------------------------------------------------- failing writes
@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on a 2 MB filesystem: a real tmpfs when the tests run as root and may mount one; otherwise
    (no root, no mount permission) the safetensors writer raises ENOSPC once a file passes 2 MB."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]
    mounted = os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0
    if not mounted:
        real_fill = _safetensors.fill

        def fill(path: Path, pieces: Any, done: Callable[[str, int], None]) -> None:
            real_fill(path, pieces, done)
            if path.stat().st_size > 2 * 2**20:
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(_safetensors, "fill", fill)
    try:
        yield disk
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


def test_disk_full_leaves_the_old_checkpoint_and_frees_the_space(small_disk: Path) -> None:
    before = _old_checkpoint(small_disk)
    big = {f"w{i}": np.ones((256, 1024), np.float32) for i in range(3)}  # 3 MB
    with pytest.raises(OSError, match=f"No space left on device: '{small_disk}'") as caught:
        write_checkpoint(small_disk, big, "safetensors", "torch", files={"config.json": NEW_CONFIG})
    assert caught.value.errno == errno.ENOSPC
    assert _files(small_disk) == before
    assert _staging_folders(small_disk) == []
    write_checkpoint(small_disk, {"w": big["w0"]}, "safetensors", "torch", files={"config.json": NEW_CONFIG})
    assert sorted(_files(small_disk)) == ["config.json", "model.safetensors"]


# ------------------------------------------------------------------------------- one checkpoint per folder
def test_a_write_replaces_weights_of_every_other_format(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, OLD, "safetensors", "torch", max_shard_size=20_000, files={"config.json": OLD_CONFIG})
    foreign = ["pytorch_model.bin", "tf_model.h5", "tf_model-00001-of-00002.h5", "model.ckpt.index", "model.onnx"]
    for name in [*foreign, "tokenizer.json", "training_args.bin"]:
        (tmp_path / name).write_bytes(b"x")
    write_checkpoint(tmp_path, NEW, "msgpack", "flax", files={"config.json": NEW_CONFIG})
    assert sorted(_files(tmp_path)) == ["config.json", "flax_model.msgpack", "tokenizer.json", "training_args.bin"]


def test_converting_to_flax_in_place_of_a_torch_checkpoint_loads_the_new_weights(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    tandem.save_pretrained(tandem.build(SMALL, seed=1), old)
    tandem.save_pretrained(tandem.build(SMALL, seed=2), new)
    convert(new, old, to="flax")  # old/ held model.safetensors of seed 1
    assert sorted(_files(old)) == ["config.json", "flax_model.msgpack"]
    loaded = tandem.from_pretrained(old, backend="torch").state_dict()
    expected = tandem.build(SMALL, seed=2).state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(loaded[key].numpy(), value.numpy(), err_msg=key)


# ------------------------------------------------------------------------------------------- bad configs
GOOD = SMALL.to_hf_dict()


def _with(**fields: Any) -> bytes:
    return json.dumps({**GOOD, **fields}).encode()


BAD_CONFIGS = {
    "json_list": (b"[1, 2]", "must hold a JSON object of config fields, got a JSON array"),
    "json_string": (b'"bert"', "got a JSON string"),
    "not_utf8": (_with(label="caf\u00e9").replace(b"\\u00e9", b"\xe9"), r"is not UTF-8 text \(byte 0xe9"),
    "invalid_json": (b'{"model_type": "bert",', "is not valid JSON"),
    "empty_file": (b"", "is not valid JSON"),
    "deep_json": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "nan_layer_norm_eps": (_with(layer_norm_eps=float("nan")), "layer_norm_eps: Input should be a finite number"),
    "inf_layer_norm_eps": (_with(layer_norm_eps=float("inf")), "layer_norm_eps: Input should be a finite number"),
    "negative_layer_norm_eps": (_with(layer_norm_eps=-1e-12), "layer_norm_eps must be positive"),
    "nan_dropout": (_with(hidden_dropout_prob=float("nan")), "hidden_dropout_prob: Input should be a finite"),
    "dropout_one": (_with(attention_probs_dropout_prob=1.0), r"attention_probs_dropout_prob must be in \[0, 1\)"),
    "negative_size": (_with(hidden_size=-36), "hidden_size must be a positive integer"),
    "zero_layers": (_with(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    "huge_vocab": (_with(vocab_size=10**30), "vocab_size must be a positive integer of at most 2147483647"),
    "string_size": (_with(num_hidden_layers="2"), "num_hidden_layers: Input should be a valid integer"),
    "float_size": (_with(intermediate_size=53.5), "intermediate_size: Input should be a valid integer"),
    "bool_size": (_with(num_attention_heads=True), "num_attention_heads: Input should be a valid integer"),
    "null_size": (_with(vocab_size=None), "vocab_size: Input should be a valid integer"),
    "string_flag": (_with(tie_word_embeddings="yes"), "tie_word_embeddings: Input should be a valid boolean"),
    "number_activation": (_with(hidden_act=3), "hidden_act: Input should be a valid string"),
    "unknown_activation": (_with(hidden_act="swish2"), "hidden_act='swish2' is not supported"),
    "negative_init_range": (_with(initializer_range=-0.02), "initializer_range must be >= 0"),
    "heads_not_dividing": (_with(num_attention_heads=5), r"hidden_size \(36\) is not divisible"),
    "pad_outside_vocab": (_with(pad_token_id=97), "pad_token_id=97 is outside the vocabulary"),
    "model_type_missing": (json.dumps({**GOOD, "model_type": None}).encode(), "model_type=None is not supported"),
    "model_type_list": (_with(model_type=["bert"]), r"model_type=\['bert'\] is not supported"),
    "architectures_string": (_with(architectures="BertModel"), "architectures must be a list of class names"),
    "id2label_list": (_with(id2label=["a", "b"]), "id2label must map each label id to a str"),
    "label2id_values": (_with(label2id={"a": "0"}), "label2id must map each label name to a int"),
}


@pytest.mark.parametrize(("content", "message"), BAD_CONFIGS.values(), ids=BAD_CONFIGS)
def test_bad_config_files_name_the_file_and_the_field(content: bytes, message: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ValueError, match=message) as caught:
        tandem.config_from_hf(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "config.json"))
    assert "\n" not in str(caught.value)


def test_a_config_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert tandem.config_from_hf(tmp_path) == tandem.config_from_hf(GOOD)


# ----------------------------------------------------------------------------------------- bad arguments
@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("saved") / "bert"
    tandem.save_pretrained(tandem.build(SMALL, seed=0), path)
    return path


BAD_CALLS: dict[str, tuple[Callable[[Path, Path], Any], type[Exception], str]] = {
    "build_negative_seed": (lambda _s, _t: tandem.build(SMALL, seed=-1), ValueError, "seed must be a non-negative"),
    "build_float_seed": (lambda _s, _t: tandem.build(SMALL, seed=1.5), TypeError, "seed must be a non-negative int"),
    "build_string_seed": (lambda _s, _t: tandem.build(SMALL, seed="0"), TypeError, "seed must be"),
    "build_bool_seed": (lambda _s, _t: tandem.build(SMALL, seed=True), TypeError, "seed must be"),
    "build_unknown_task": (lambda _s, _t: tandem.build(SMALL, task="nope"), ValueError, "unknown task 'nope'"),
    "build_task_type": (lambda _s, _t: tandem.build(SMALL, task=["base"]), TypeError, "task must be a str"),
    "build_unknown_backend": (lambda _s, _t: tandem.build(SMALL, backend="tf"), ValueError, "unknown backend 'tf'"),
    "build_backend_type": (lambda _s, _t: tandem.build(SMALL, backend=["torch"]), TypeError, "backend must be a str"),
    "build_unknown_dtype": (lambda _s, _t: tandem.build(SMALL, dtype="float64"), ValueError, "dtype must be one of"),
    "build_not_a_config": (lambda _s, _t: tandem.build({"model_type": "bert"}), TypeError, "not a tandem family"),
    "load_weights_file": (
        lambda s, _t: tandem.from_pretrained(s / "model.safetensors"),
        ValueError,
        "path=.* is a file; expected a checkpoint directory",
    ),
    "load_missing": (
        lambda _s, t: tandem.from_pretrained(t / "nope"),
        FileNotFoundError,
        r"no config\.json at .*: path names no directory",
    ),
    "load_path_type": (lambda _s, _t: tandem.from_pretrained(3), TypeError, "path must be a str or os.PathLike"),
    "load_unknown_task": (lambda s, _t: tandem.from_pretrained(s, task="nope"), ValueError, "unknown task 'nope'"),
    "load_unknown_dtype": (lambda s, _t: tandem.from_pretrained(s, dtype="int8"), ValueError, "dtype must be one"),
    "load_strict_type": (lambda s, _t: tandem.from_pretrained(s, strict="yes"), TypeError, "strict must be a bool"),
    "config_type": (lambda _s, _t: tandem.config_from_hf(3), TypeError, "expected a path to config.json"),
    "convert_to": (lambda s, t: convert(s, t / "out", to="tf"), ValueError, "to must be 'torch' or 'flax'"),
    "convert_format": (lambda s, t: convert(s, t / "out", to="flax", format="bin"), ValueError, "safetensors, not bin"),
    "convert_dtype": (lambda s, t: convert(s, t / "out", to="flax", dtype="int8"), ValueError, "dtype must be one"),
    "convert_source_format": (
        lambda s, t: convert(s, t / "out", to="flax", source_format="h5"),
        ValueError,
        "unknown checkpoint format 'h5'",
    ),
    "convert_weights_file": (
        lambda s, t: convert(s / "model.safetensors", t / "out", to="flax"),
        ValueError,
        "source=.* is a file",
    ),
    "convert_shard_size": (
        lambda s, t: convert(s, t / "out", to="flax", max_shard_size="0MB"),
        ValueError,
        "max_shard_size must be at least 1 byte",
    ),
}


@pytest.mark.parametrize(("call", "error", "message"), BAD_CALLS.values(), ids=BAD_CALLS)
def test_bad_arguments_are_named(
    call: Callable[[Path, Path], Any], error: type[Exception], message: str, saved: Path, tmp_path: Path
) -> None:
    with pytest.raises(error, match=message):
        call(saved, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"format": "h5"}, ValueError, "format must be one of 'safetensors', 'bin', 'msgpack', got 'h5'"),
        ({"max_shard_size": -1}, ValueError, "max_shard_size must be at least 1 byte, got -1"),
        ({"max_shard_size": "abc"}, ValueError, "max_shard_size: cannot read a size from 'abc'"),
        ({"max_shard_size": 1.5e6}, TypeError, "max_shard_size must be an int"),
        ({"max_shard_size": True}, TypeError, "max_shard_size must be an int"),
    ],
)
def test_save_pretrained_refuses_bad_arguments_before_writing(
    kwargs: dict[str, Any], error: type[Exception], message: str, tmp_path: Path
) -> None:
    with pytest.raises(error, match=message):
        tandem.save_pretrained(tandem.build(SMALL), tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_save_pretrained_into_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"keep")
    with pytest.raises(ValueError, match="is a file; a checkpoint is written into a directory"):
        tandem.save_pretrained(tandem.build(SMALL), tmp_path / "file")
    assert (tmp_path / "file").read_bytes() == b"keep"


# ---------------------------------------------------------------------------------------- command line
# {saved}: a checkpoint; {out}: a destination that must stay absent; {bad}: a directory whose config.json is a list
CLI_CASES = {
    "no_command": "",
    "unknown_command": "nope",
    "unknown_option": "inspect {saved} --no-such-flag",
    "parity_missing_path": "parity {out}",
    "parity_bad_batch": "parity --batch 0",
    "parity_bad_number": "parity --tol abc",
    "inspect_bad_config": "inspect {bad}",
    "inspect_weights_file": "inspect {saved}/model.safetensors",
    "inspect_unknown_task": "inspect {saved} --task nope",
    "bench_bad_threads": "bench --threads 0",
    "convert_missing_to": "convert {saved} {out}",
    "convert_bad_format": "convert {saved} {out} --to flax --format bin",
    "convert_bad_shard_size": "convert {saved} {out} --to flax --max-shard-size x",
    "convert_into_a_file": "convert {saved} {saved}/config.json --to flax",
}


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_failures_are_one_line_and_exit_2(
    case: str, as_json: bool, saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_bytes(b"[1, 2]")
    line = CLI_CASES[case].format(saved=saved, out=tmp_path / "out", bad=tmp_path / "bad")
    argv = line.split() + (["--json"] if as_json else [])
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("tandem") and ": error: " in err, err
    if as_json:
        report = json.loads(out)
        assert report["ok"] is False and set(report["error"]) == {"type", "message"}
        assert err.rstrip("\n").endswith(report["error"]["message"])
    else:
        assert out == ""
    assert not (tmp_path / "out").exists()


def test_cli_reports_unexpected_errors_in_one_line_and_the_traceback_with_debug(
    saved: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*_args: Any) -> None:
        raise RuntimeError("internal\nfailure")

    monkeypatch.setattr("tandem.tools.cli.build_graph", broken)
    assert main(["inspect", str(saved), "--json"]) == 2
    out, err = capsys.readouterr()
    assert err == "tandem inspect: error: internal failure\n"
    assert json.loads(out) == {"ok": False, "error": {"type": "RuntimeError", "message": "internal failure"}}
    assert main(["inspect", str(saved), "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "RuntimeError: internal" in err
    assert err.endswith("tandem inspect: error: internal failure\n")


def test_cli_process_exits_2_without_a_traceback(tmp_path: Path) -> None:
    code = "import sys\nfrom tandem.tools.cli import main\nsys.exit(main())"
    argv = [sys.executable, "-c", code, "convert", str(tmp_path), str(tmp_path / "out"), "--to", "flax"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"tandem convert: error: no config.json at {tmp_path / 'config.json'}\n"


def test_cli_json_reports_of_successes(saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(saved), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["family"], report["task"], report["config"]["hidden_size"]) == ("bert", "base", 36)
    assert report["total_parameters"] == sum(report["parameters"].values())
    assert main(["convert", str(saved), str(tmp_path / "out"), "--to", "flax", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["format"], report["files"]) == ("msgpack", ["flax_model.msgpack", "config.json"])
