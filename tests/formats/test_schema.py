"""The schema layer: each node's rule, the field path and offset of a violation, the fast
paths agreeing with the item-by-item walk, and the document schemas accepting what the real
writers write (every transformers config class we can build, tokenizers' files)."""
from __future__ import annotations

import json

import pytest

from provenance.errors import MalformedCheckpoint
from provenance.formats.documents import HF_CONFIG, SAFETENSORS_INDEX, TOKENIZER_JSON
from provenance.formats.schema import (
    ANY,
    BOOL,
    NULL,
    Int,
    ListOf,
    MapOf,
    Num,
    Obj,
    OneOf,
    Pair,
    Str,
    field_path,
    optional,
    parse_document,
    validate,
)
from tests.fuzz.targets import CORPUS


def violation(value: object, spec: object, raw: bytes | None = None) -> MalformedCheckpoint:
    with pytest.raises(MalformedCheckpoint) as info:
        validate(value, spec, "f.json", "doc", raw=raw)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(("spec", "good", "bad"), [
    (Int(1, 10), [1, 10], [0, 11, True, 1.0, "1", None]),
    (Num(0.0, 1.0), [0, 0.5, 1], [-0.1, 1.5, True, "0.5", None]),
    (Str(4), ["", "abcd", "\u00e9\u00e9"], ["abcde", "\u00e9\u00e9\u00e9", 1, None, ["a"]]),
    (Str(8, choices=frozenset({"a", "b"})), ["a"], ["c", 1]),
    (BOOL, [True, False], [0, 1, "true", None]),
    (NULL, [None], [0, "", False]),
    (ListOf(Int(0, 9), 2), [[], [1, 2]], [[1, 2, 3], [1, "2"], (1,), {"a": 1}]),
    (Pair(Str(8), Num()), [["a", 1.5]], [["a"], ["a", "b"], ["a", 1, 2], ("a", 1)]),
    (MapOf(Int(0, 9), 2), [{}, {"a": 1, "b": 2}], [{"a": 1, "b": 2, "c": 3}, {"a": -1}, [["a", 1]]]),
    (Obj({"a": Int(0, 9)}, required=frozenset({"a"})), [{"a": 1}, {"a": 1, "z": [object()]}], [{}, {"a": "1"}, [1]]),
    (Obj({"a": Int(0, 9)}, others=None), [{"a": 1}, {}], [{"a": 1, "b": 2}]),
    (optional(Str(8)), ["x", None], [1]),
    (ANY, [None, 1, [object()]], []),
])
def test_each_node_accepts_what_it_says_and_refuses_the_rest(spec: object, good: list[object], bad: list[object]) -> None:
    for value in good:
        assert validate(value, spec, "f.json", "doc") is value  # type: ignore[arg-type]
    for value in bad:
        violation(value, spec)


def test_a_violation_names_the_json_path_and_the_offset_of_its_key() -> None:
    raw = b'{"model": {"vocab": {"a": 0, "b": "1"}}}'
    error = violation(json.loads(raw), TOKENIZER_JSON, raw)
    assert error.field == "model.vocab.b" and error.offset == raw.index(b'"b"') and 'found "1"' in error.message
    assert field_path(("weight_map", "model.layers.0.x", 3)) == 'weight_map["model.layers.0.x"][3]'
    error = violation({"model": {}}, TOKENIZER_JSON)
    assert error.field == "model.vocab" and "required" in error.message


def test_one_of_names_the_field_of_the_option_that_got_deepest() -> None:
    spec = OneOf((MapOf(Int(0, 9), 8), ListOf(Pair(Str(8), Num()), 8)))
    assert violation([["a", 1], ["b", "x"]], spec).field == "[1][1]"
    assert violation({"a": 1, "b": -1}, spec).field == "b"
    assert violation("neither", spec).field == "doc"


ADDED_TOKEN = Obj({"id": Int(0, 9), "content": Str(4)}, required=frozenset({"id", "content"}))


@pytest.mark.parametrize("spec", [Int(0, 5), Num(0, 5), Str(8), BOOL, NULL, Pair(Str(4), Str(4)), OneOf((Str(4), Int(0, 5))),
                                  ADDED_TOKEN, Obj({"a": Int(0, 5)}, others=None), Obj({"a": Int(0, 5)}, others=Int(0, 1)),
                                  Obj({"a": Int(0, 5)}, max_keys=1)])
def test_fast_paths_agree_with_the_item_by_item_walk(spec: object) -> None:
    samples = [0, 5, 6, -1, 2.5, True, None, "", "abcd", "abcdefghi", ["a", "b"], ["a", 1], [], {"a": 1},
               {"a": 7}, {"a": 1, "b": 2}, {}, {"id": 1, "content": "x"}, {"id": 1}, {"id": True, "content": "x"},
               {"content": "abcdefghi", "id": 2}, {"id": 3, "content": "y", "special": True}, {"a": None}]
    for size in (1, 3):
        for start in range(len(samples) - size + 1):
            values = samples[start:start + size]
            walked = True
            try:
                for value in values:
                    spec.check(value, ())  # type: ignore[attr-defined]
            except Exception:
                walked = False
            if spec.fast(values):  # type: ignore[attr-defined]
                assert walked, values  # fast may say no to a valid list (then the walk decides), never yes to a bad one


def test_a_list_of_small_objects_is_checked_in_one_pass() -> None:
    """~6,000 added tokens pass without a walk per object; a bad one is still named by the walk."""
    tokens = [{"id": i % 10, "content": "t", "special": False} for i in range(6000)]
    assert ADDED_TOKEN.fast(tokens) and ADDED_TOKEN.fast([])
    tokens[4321] = {"id": 3, "content": "abcdefgh"}
    assert not ADDED_TOKEN.fast(tokens)
    error = violation(tokens, ListOf(ADDED_TOKEN, 10_000))
    assert error.field == "[4321].content" and "exceeds the cap" in error.message


TRANSFORMERS_CONFIGS = ["LlamaConfig", "MistralConfig", "MixtralConfig", "Qwen2Config", "Qwen2MoeConfig", "GemmaConfig",
                        "Gemma2Config", "Phi3Config", "GPT2Config", "GPTNeoXConfig", "BertConfig", "LlavaConfig",
                        "Qwen3Config", "OlmoConfig", "StableLmConfig", "FalconConfig"]


@pytest.mark.parametrize("name", TRANSFORMERS_CONFIGS)
def test_configs_transformers_writes_are_valid(name: str) -> None:
    transformers = pytest.importorskip("transformers")
    config_class = getattr(transformers, name, None)
    if config_class is None:
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    raw = config_class().to_json_string().encode()
    parse_document(raw, HF_CONFIG, "config.json", "config.json")


@pytest.mark.parametrize("path", sorted((CORPUS / "tokenizer-json").glob("*.json")), ids=lambda p: p.name)
def test_tokenizer_files_the_tokenizers_library_writes_are_valid(path: object) -> None:
    parse_document(path.read_bytes(), TOKENIZER_JSON, str(path), "tokenizer.json")  # type: ignore[attr-defined]


def test_index_files_are_valid_and_lying_ones_are_not() -> None:
    raw = (CORPUS / "index" / "index.json").read_bytes()
    parse_document(raw, SAFETENSORS_INDEX, "index.json", "index")
    document = json.loads(raw)
    document["metadata"]["total_size"] = "12"
    with pytest.raises(MalformedCheckpoint, match=r"metadata\.total_size"):
        parse_document(json.dumps(document).encode(), SAFETENSORS_INDEX, "index.json", "index")
