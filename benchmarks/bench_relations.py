"""How many requests get relation copies: the coverage of a relation table on the dev data.

A relation copy trains the edit on the subject in another phrasing of the request's relation
(``EditorConfig.relation_copies``). A request gets copies only when the table finds its relation
and has a phrasing that is none of the request's evaluation prompts
(:func:`repedit.training_prompts.relation_copy_templates`, the code the Editor runs). This
script counts, for every record of CounterFact and zsRE (``skip_invalid``, EasyEdit's ``alt``
targets), the share with at least one copy and the mean number of phrasings available, for the
table shipped with repedit and for ROME's ``known_1000.json`` templates. No model is loaded.

    python benchmarks/bench_relations.py                      # -> results/relation_coverage.{json,md}
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import environment, write_results  # noqa: E402


def coverage(requests: list, table) -> dict:
    """Share of ``requests`` with at least one relation-copy template, and the mean count."""
    from repedit.training_prompts import relation_copy_templates

    counts = [len(relation_copy_templates(table, r)) for r in requests]
    n = len(counts)
    return {"requests": n, "with_copies": sum(c > 0 for c in counts), "share": sum(c > 0 for c in counts) / max(n, 1),
            "mean_templates": sum(counts) / max(n, 1)}


def main(argv=None) -> int:
    from repedit.eval.data import data_info, load_counterfact, load_zsre, relation_templates, to_requests
    from repedit.relations import builtin_relations

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="relation_coverage")
    args = p.parse_args(argv)

    tables = {"shipped (repedit/resources/relations.json)": builtin_relations(),
              "known_1000.json templates": relation_templates()}
    rows, data = [], {}
    for source, ds in (("counterfact", load_counterfact()), ("zsre", load_zsre(skip_invalid=True))):
        reqs = to_requests(ds)
        data[source] = data_info(ds)
        for tname, table in tables.items():
            rows.append({"data": source, "table": tname, **coverage(reqs, table)})
    notes = ("Requests that get relation copies: the table finds the request's relation and has another phrasing "
             "that is none of its evaluation prompts (`repedit.training_prompts.relation_copy_templates`). "
             "share = with_copies / requests; mean_templates: phrasings available per request (BaFT trains "
             "`relation_copies` = 4 of them by default).")
    write_results(args.name, {"rows": rows, "data": data, "environment": environment()}, table=rows,
                  columns=["data", "table", "requests", "with_copies", "share", "mean_templates"], notes=notes)
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
