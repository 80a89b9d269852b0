import pytest
import torch

import repedit
from repedit.positions import Positions, encode, rule_mask, token_info

from conftest import tiny_model


def test_encode_masks_right_and_left(tok):
    prompts = ["the capital of france is", "danielle darrieux speaks"]
    for side in ("right", "left"):
        b = encode(tok, prompts, [" paris", " french english"], subjects=["france", "danielle darrieux"], padding_side=side)
        assert b.input_ids.shape == (2, 6)
        assert b.prompt_mask.sum(1).tolist() == [5, 3]
        assert b.target_mask.sum(1).tolist() == [1, 2]
        assert b.subject_mask.sum(1).tolist() == [1, 2]
        assert (b.attention_mask.bool() == (b.prompt_mask | b.target_mask)).all()
        ids = b.input_ids[0][b.subject_mask[0]].tolist()
        assert tok.convert_ids_to_tokens(ids) == ["france"]
        assert (b.labels[b.target_mask] == b.input_ids[b.target_mask]).all()
        assert (b.labels[~b.target_mask] == -100).all()
    left = encode(tok, prompts, padding_side="left")
    assert left.attention_mask[1, :2].tolist() == [0, 0]


def test_subject_not_in_prompt(tok):
    with pytest.raises(ValueError, match="does not occur"):
        encode(tok, ["the capital of france is"], subjects=["paris"])


def test_rule_masks():
    attn = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    info = token_info  # noqa: F841
    last = rule_mask(Positions.LAST_PROMPT, attn, 0, 4, None)
    assert last.tolist() == [[False, False, False, True], [False, False, False, True]]
    prompt = rule_mask(Positions.PROMPT, attn, 0, 4, None)
    assert prompt.tolist() == [[False, True, True, True], [True, True, True, True]]
    # decoding step: prompt rules are silent, "all" acts on the new token
    attn2 = torch.cat([attn, torch.ones(2, 1, dtype=torch.long)], 1)
    assert not rule_mask(Positions.LAST_PROMPT, attn2, 4, 4, None).any()
    assert rule_mask(Positions.ALL, attn2, 4, 4, None).all()
    from repedit.positions import TokenInfo

    pm = torch.tensor([[False, True, True, False], [True, True, False, False]])
    last = rule_mask(Positions.LAST_PROMPT, attn, 0, 4, TokenInfo(prompt_mask=pm))
    assert last.nonzero().tolist() == [[0, 2], [1, 1]]
    with pytest.raises(ValueError, match="subject"):
        rule_mask(Positions.SUBJECT, attn, 0, 4, None)


@pytest.mark.parametrize("rule", ["last_prompt", "subject", "prompt", "all"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_single_examples(tok, rule, side):
    model = tiny_model("llama")
    edited = repedit.wrap(model, tok)
    edited.add("e", "loreft", layer=1, positions=rule, config={"rank": 4, "seed": 3})
    with torch.no_grad():
        edited.interventions["e"].learned_source.bias.fill_(2.0)
    prompts = ["the capital of france is", "danielle darrieux speaks", "he was born in"]
    conts = [" paris", " french", " london england"]
    subjects = ["france", "danielle darrieux", "he"]
    batch = encode(tok, prompts, conts, subjects, padding_side=side)
    with torch.no_grad(), batch.info():
        logits = model(**batch.model_inputs()).logits
    for i in range(3):
        one = encode(tok, prompts[i : i + 1], conts[i : i + 1], subjects[i : i + 1])
        with torch.no_grad(), one.info():
            ref = model(**one.model_inputs()).logits[0]
        got = logits[i][batch.attention_mask[i].bool()]
        assert (got - ref).abs().max() <= 1e-5
    # the rule acts: the edit changes the logits
    with edited.disabled(), torch.no_grad(), batch.info():
        base = model(**batch.model_inputs()).logits
    assert (base - logits).abs().max() > 1e-3


def test_length_chunks_cover_every_text_once_longest_first(tok):
    from repedit.positions import length_chunks

    texts = ["a", "a b c d e", "a b", "a b c d e f g", "a b c", "a"]
    chunks = length_chunks(tok, texts, 2)
    assert sorted(i for c in chunks for i in c) == list(range(len(texts)))
    assert all(len(c) <= 2 for c in chunks)
    lengths = [len(texts[i].split()) for c in chunks for i in c]
    assert lengths == sorted(lengths, reverse=True)
    assert chunks[0] == [3, 1]
    assert length_chunks(tok, [], 4) == []
    with pytest.raises(ValueError, match="batch_size"):
        length_chunks(tok, texts, 0)
