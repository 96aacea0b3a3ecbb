"""Bad call-time inputs: every backend raises the same exception class with the same message.

The checks live once, in the framework-free call plan (``core/call.py``, ``core/validation.py``); these tests
hold both backends to them, case by case, with the message naming the argument, the value or shape and the
limit. Values are checked on concrete inputs; inside a user's own ``jax.jit`` only shapes and dtypes are.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import jax
import numpy as np
import pytest
import torch

import tandem

CONFIG = tandem.BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=20,
)
BACKENDS = ("torch", "flax")
IDS = [[1, 2, 3]]


def _model(task: str, backend: str, **overrides: Any) -> Any:
    config = CONFIG.model_copy(update=overrides) if overrides else CONFIG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tandem.build(config, task=task, backend=backend)


def _native(backend: str, value: Any) -> Any:
    array = np.asarray(value)
    return torch.from_numpy(array) if backend == "torch" else array


def _errors(task: str, inputs: dict[str, Any], **overrides: Any) -> dict[str, tuple[type, str]]:
    out = {}
    for backend in BACKENDS:
        model = _model(task, backend, **overrides)
        with pytest.raises((ValueError, TypeError)) as caught:
            model(**{k: _native(backend, v) for k, v in inputs.items()})
        out[backend] = (caught.type, str(caught.value))
    return out


# name -> (task, inputs, pattern the message must match)
CASES: dict[str, tuple[str, dict[str, Any], str]] = {
    "id_at_vocab_size": ("base", {"input_ids": [[1, 50]]}, r"input_ids holds 50, .*50-entry word .*vocab_size=50"),
    "negative_id": ("base", {"input_ids": [[1, -2]]}, r"input_ids holds -2, .*\[0, 50\)"),
    "id_beyond_int32": ("base", {"input_ids": np.array([[1, 2**40]])}, r"input_ids holds 1099511627776"),
    "float_ids": ("base", {"input_ids": [[1.0, 2.0]]}, r"input_ids must be an integer array, got float"),
    "ids_1d": ("base", {"input_ids": [1, 2, 3]}, r"input_ids must be \(batch, length\), got \(3,\)"),
    "zero_length": ("base", {"input_ids": np.zeros((2, 0), np.int64)}, r"at least one row and one position"),
    "too_long": ("base", {"input_ids": np.ones((1, 21), np.int64)}, r"21 positions long .*max_position_embeddings=20"),
    "token_type_out_of_range": (
        "base",
        {"input_ids": IDS, "token_type_ids": [[0, 1, 2]]},
        r"token_type_ids holds 2, .*type_vocab_size=2",
    ),
    "token_type_shape": ("base", {"input_ids": IDS, "token_type_ids": [[0, 1]]}, r"token_type_ids must have the shape"),
    "position_out_of_range": (
        "base",
        {"input_ids": IDS, "position_ids": [[0, 1, 20]]},
        r"position_ids holds 20, .*max_position_embeddings=20",
    ),
    "mask_3d": ("base", {"input_ids": IDS, "attention_mask": np.ones((1, 3, 3), np.int64)}, r"3-D and 4-D"),
    "mask_length": ("base", {"input_ids": IDS, "attention_mask": [[1, 1]]}, r"attention_mask must cover .*got"),
    "mask_rows": ("base", {"input_ids": IDS, "attention_mask": [[1, 1, 1]] * 2}, r"attention_mask rows"),
    "embeds_width": ("base", {"inputs_embeds": np.ones((1, 3, 8), np.float32)}, r"inputs_embeds must have 16"),
    "ids_and_embeds": (
        "base",
        {"input_ids": IDS, "inputs_embeds": np.ones((1, 3, 16), np.float32)},
        r"exactly one of input_ids",
    ),
    "mlm_label_out_of_range": (
        "masked_lm",
        {"input_ids": IDS, "labels": [[1, 2, 50]]},
        r"labels holds 50: .*\[0, 50\)",
    ),
    "mlm_label_shape": ("masked_lm", {"input_ids": IDS, "labels": [[1, 2]]}, r"labels must have shape \(1, 3\)"),
    "class_label_out_of_range": (
        "sequence_classification",
        {"input_ids": IDS, "labels": [2]},
        r"labels holds 2: labels must be in \[0, 2\)",
    ),
    "float_token_label": ("token_classification", {"input_ids": IDS, "labels": [[0.0, 1.0, 0.0]]}, r"integer"),
    "choice_label": (
        "multiple_choice",
        {"input_ids": np.ones((1, 3, 4), np.int64), "labels": [3]},
        r"labels holds 3: labels must be in \[0, 3\)",
    ),
    "choice_rank": ("multiple_choice", {"input_ids": IDS}, r"must be \(batch, choices, length\)"),
    "head_mask_shape": ("base", {"input_ids": IDS, "head_mask": np.ones((3, 2), np.float32)}, r"head_mask must be"),
    "span_positions_float": (
        "question_answering",
        {"input_ids": IDS, "start_positions": [0.5], "end_positions": [1]},
        r"start_positions must be an integer array",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_same_clear_error_in_every_backend(name: str) -> None:
    task, inputs, pattern = CASES[name]
    errors = _errors(task, inputs)
    assert errors["torch"] == errors["flax"], errors
    _, message = errors["torch"]
    assert re.search(pattern, message), message


def test_unknown_keyword_is_named() -> None:
    for backend in BACKENDS:
        with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['lables'\]"):
            _model("masked_lm", backend)(input_ids=_native(backend, IDS), lables=_native(backend, IDS))


def test_valid_edge_inputs_run() -> None:
    """The limits themselves are accepted: the last id, the last position, ignored labels."""
    for backend in BACKENDS:
        model = _model("masked_lm", backend)
        out = model(
            input_ids=_native(backend, np.full((1, 20), 49)),
            position_ids=_native(backend, np.arange(20)[None]),
            labels=_native(backend, np.full((1, 20), -100)),
        )
        assert tuple(out.logits.shape) == (1, 20, 50)


def test_shapes_are_checked_inside_a_users_jit() -> None:
    """Traced inputs have no values to check, but their shapes and dtypes still are."""
    model = _model("base", "flax")
    run = jax.jit(lambda params, ids: model.apply(params, input_ids=ids).last_hidden_state)
    assert run(model.params, np.ones((1, 3), np.int32)).shape == (1, 3, 16)
    with pytest.raises(TypeError, match=r"input_ids must be an integer array"):
        run(model.params, np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, length\)"):
        run(model.params, np.ones((3,), np.int32))


def test_torch_takes_numpy_and_lists_as_flax_does() -> None:
    model = _model("masked_lm", "torch")
    ids = np.array([[1, 2, 3]])
    expected = model(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(ids))
    for given in (ids, ids.tolist()):
        out = model(input_ids=given, labels=given)
        assert torch.equal(out.logits, expected.logits) and torch.equal(out.loss, expected.loss)
    with pytest.raises(ValueError, match=r"input_ids holds 50"):
        model(input_ids=[[1, 50]])
