"""The relation table: the shipped phrasings, tolerant lookup, files and bad input."""

import json

import pytest

from repedit.relations import RelationTable, builtin_relations, load_relations


def test_the_shipped_table_loads_from_the_package_with_one_placeholder_per_template():
    table = builtin_relations()
    assert len(table) == 68 and table.source == "repedit:relations.json"
    templates = [t for ts in table.relations.values() for t in ts]
    assert len(templates) > 380 and all(t.count("{}") == 1 for t in templates)
    assert len(set(templates)) == len(templates)  # no template in two relations: exact lookups are unambiguous


def test_lookup_is_exact_after_folding_case_spacing_and_end_punctuation():
    table = builtin_relations()
    assert table.relation_of("The capital of {} is") == "P36"
    assert table.relation_of("THE CAPITAL OF {}   IS.") == "P36"
    others = table.others("The capital of {} is")
    assert "The capital of {} is" not in others and "The capital city of {} is" in others


def test_lookup_finds_other_wordings_of_a_relation_by_shared_words_and_word_pairs():
    table = builtin_relations()
    assert table.relation_of("{} was born in the town of") == "P19"
    assert table.relation_of("Where was {} born? In") == "P19"
    assert table.relation_of("{} is headquartered in the city of") == "P159"


def test_questions_find_their_relation():
    """Question forms (zsRE asks its facts as questions) match relations phrased both ways."""
    table = builtin_relations()
    assert table.relation_of("What did {} die of?") == "P509"
    assert table.relation_of("When was {} born? On") == "P569"
    assert table.relation_of("Who is the spouse of {}?") == "P26"
    assert table.relation_of("Which football team does {} play for?") == "P54"
    copies = table.others("What did {} die of?")
    assert "{} died of" in copies and all("{}" in t for t in copies)
    # a question about the place of birth stays with the place, not the date
    assert table.relation_of("Where was {} born? In") == "P19"


def test_ambiguous_or_unknown_templates_get_no_relation():
    table = builtin_relations()
    for template in ("{} plays", "{}, in", "{} was created in", "{} likes to eat"):
        assert table.relation_of(template) is None, template
        assert table.others(template) == [] and table.get(template, ["x"]) == ["x"]


def test_word_pairs_keep_relations_apart_that_share_their_words():
    table = RelationTable({"developer": ["{} was created by"], "formed": ["{} was formed in", "{} was founded in"]})
    assert table.relation_of("{} was founded in") == "formed"
    assert table.relation_of("{}, which was founded in") == "formed"
    assert table.relation_of("{} was created in") is None  # "created" alone is not the developer relation


def test_a_table_file_round_trips_and_bad_files_name_the_problem(tmp_path):
    good = tmp_path / "rel.json"
    good.write_text(json.dumps({"format": "repedit-relations/1",
                                "relations": [{"id": "birth", "templates": ["{} was born in", "{}'s birthplace is"]}]}))
    assert load_relations(good).others("{} was born in") == ["{}'s birthplace is"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_relations(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_relations(bad)
    bad.write_text(json.dumps([{"template": "{} was born in", "relation_id": "P19"}]))
    with pytest.raises(ValueError, match="is not a relation table"):
        load_relations(bad)
    bad.write_text(json.dumps({"format": "repedit-relations/1", "relations": [{"id": "x", "templates": ["no slot"]}]}))
    with pytest.raises(ValueError, match="exactly one"):
        load_relations(bad)
    bad.write_text(json.dumps({"format": "repedit-relations/1", "relations": [
        {"id": "x", "templates": ["{} a"]}, {"id": "x", "templates": ["{} b"]}]}))
    with pytest.raises(ValueError, match="appears twice"):
        load_relations(bad)
    with pytest.raises(ValueError, match="min_score"):
        RelationTable({"x": ["{} a"]}, min_score=0)


def test_relation_copy_templates_skip_evaluation_prompts_and_the_coverage_script_counts_them():
    """A copy's template is another phrasing of the relation whose filled-in prompt is none of the
    request's evaluation prompts; bench_relations counts requests with at least one."""
    from benchmarks.bench_relations import coverage
    from repedit.requests import EditRequest
    from repedit.training_prompts import relation_copy_templates

    table = RelationTable({"lang": ["{} speaks", "The mother tongue of {} is", "{} is a native speaker of"]})
    req = EditRequest(prompt="Danielle Darrieux speaks", target_new="English", subject="Danielle Darrieux",
                      rephrase_prompts=["The mother tongue of Danielle Darrieux is"])
    assert relation_copy_templates(table, req) == ["{} is a native speaker of"]
    other = EditRequest(prompt="Paris is the capital of", target_new="Italy", subject="Paris")
    assert relation_copy_templates(table, other) == []
    assert coverage([req, other], table) == {"requests": 2, "with_copies": 1, "share": 0.5, "mean_templates": 0.5}
