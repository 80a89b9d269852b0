"""EditRequest: construction, serialisation and every validation error."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from repedit.requests import REQUEST_FIELDS, EditRequest, LocalityPrompt, validate_requests

WORDS = "<pad> <s> </s> <unk> the capital of france is paris rome spain madrid a".split()


def make_tokenizer(model_max_length: int | None = None) -> PreTrainedTokenizerFast:
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kw = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", **kw)


def good(**over) -> EditRequest:
    kw = dict(
        prompt="the capital of france is",
        target_new="rome",
        subject="france",
        ground_truth="paris",
        rephrase_prompts=["capital of france is"],
        locality_prompts=[{"prompt": "the capital of spain is", "ground_truth": "madrid"}],
        portability=[("the capital of france is", "rome")],
        case_id=3,
    )
    kw.update(over)
    return EditRequest(**kw)


def test_construction_coerces_and_derives_relation():
    r = good()
    assert r.locality_prompts == [LocalityPrompt("the capital of spain is", "madrid")]
    assert r.portability == [LocalityPrompt("the capital of france is", "rome")]
    assert r.relation == "the capital of {} is"
    assert EditRequest("p", "t").relation is None
    assert good(relation="R {}").relation == "R {}"
    assert EditRequest("x", "y", rephrase_prompts=("a", "b")).rephrase_prompts == ["a", "b"]
    assert r.validate() is r


def test_locality_prompt_from_dict():
    assert LocalityPrompt.from_dict({"prompt": "p", "ground_truth": "g"}) == LocalityPrompt("p", "g")
    assert LocalityPrompt.from_dict(("p", "g")) == LocalityPrompt("p", "g")
    assert LocalityPrompt.from_dict(["p", "g"]).to_dict() == {"prompt": "p", "ground_truth": "g"}
    with pytest.raises(ValueError, match="ground_truth"):
        LocalityPrompt.from_dict({"prompt": "p"})
    with pytest.raises(ValueError):
        LocalityPrompt.from_dict("p")


def test_round_trip_json():
    r = good()
    d = json.loads(json.dumps(r.to_dict()))
    assert list(d) == list(REQUEST_FIELDS)
    assert EditRequest.from_dict(d) == r
    minimal = EditRequest.from_dict({"prompt": "a", "target_new": "b"})
    assert minimal == EditRequest("a", "b") and EditRequest.from_dict(minimal.to_dict()) == minimal


def test_from_dict_errors():
    with pytest.raises(ValueError, match=r"index 4.*'target_new' is missing"):
        EditRequest.from_dict({"prompt": "a"}, index=4)
    with pytest.raises(ValueError, match=r"case_id=9.*unknown field 'rephrase_prompt'"):
        EditRequest.from_dict({"prompt": "a", "target_new": "b", "case_id": 9, "rephrase_prompt": "x"})
    with pytest.raises(ValueError, match=r"locality_prompts\[0\]"):
        EditRequest.from_dict({"prompt": "a", "target_new": "b", "locality_prompts": [{"prompt": "x"}]})


@pytest.mark.parametrize(
    "over,field",
    [
        ({"target_new": ""}, "target_new"),
        ({"target_new": "   "}, "target_new"),
        ({"target_new": 5}, "target_new"),
        ({"prompt": ""}, "prompt"),
        ({"subject": "germany"}, "subject"),
        ({"ground_truth": " "}, "ground_truth"),
        ({"rephrase_prompts": "capital of france is"}, "rephrase_prompts"),
        ({"rephrase_prompts": ["ok", 3]}, "rephrase_prompts[1]"),
        ({"locality_prompts": [{"prompt": "x"}]}, "locality_prompts[0]"),
        ({"locality_prompts": [("x", "")]}, "locality_prompts[0].ground_truth"),
        ({"locality_prompts": "x"}, "locality_prompts"),
        ({"portability": [42]}, "portability[0]"),
        ({"case_id": 1.5}, "case_id"),
        ({"case_id": True}, "case_id"),
        ({"relation": "no placeholder"}, "relation"),
    ],
)
def test_validate_names_field_and_record(over, field):
    r = good(**over)
    with pytest.raises(ValueError) as e:
        r.validate()
    msg = str(e.value)
    assert f"'{field}'" in msg
    if over.get("case_id") not in (1.5, True):
        assert "case_id=3" in msg
    with pytest.raises(ValueError, match="index 2"):
        r.validate(index=2)


def test_validate_length():
    tok = make_tokenizer()
    good().validate(tok, max_length=6)  # "the capital of france is" + " rome": 6 tokens, fits exactly
    long = good(rephrase_prompts=["a a a a capital of france is"])  # 8 + 1 tokens
    with pytest.raises(ValueError, match=r"case_id=3 index 1: field 'rephrase_prompts\[0\]'.*9 tokens.*context of 8"):
        validate_requests([good(), long], tok, max_length=8)
    with pytest.raises(ValueError, match=r"case_id=3 index 0: field 'prompt'.*6 tokens"):
        validate_requests([good()], tok, max_length=5)
    # without max_length the tokenizer's own limit is used, unless it is HF's "unknown" placeholder
    with pytest.raises(ValueError, match="context of 5"):
        good().validate(make_tokenizer(model_max_length=5))
    good().validate(make_tokenizer())


def test_validate_requests():
    out = validate_requests([good(), {"prompt": "the capital of spain is", "target_new": "rome", "subject": "spain"}])
    assert isinstance(out[1], EditRequest) and out[1].relation == "the capital of {} is"
    with pytest.raises(ValueError, match=r"index 1: field 'target_new'"):
        validate_requests([good(), {"prompt": "a", "target_new": ""}])
    with pytest.raises(ValueError, match="index 0"):
        validate_requests(["not a request"])
