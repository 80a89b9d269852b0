"""Evaluation: data loaders (CounterFact, zsRE, your own JSON/JSONL) and labelled metrics.

Example::

    from repedit.eval import load_counterfact, to_requests, evaluate_requests, build_case_records, summarize

    requests = to_requests(load_counterfact(limit=50, seed=0))
    pre = evaluate_requests(model, tok, requests)            # edits disabled
    post = evaluate_requests(model, tok, requests, pre=pre)  # edits enabled
    print(summarize(build_case_records(requests, pre, post)))

``datasets`` (the ``eval`` extra) is needed only by the loaders.
"""

from repedit.eval.data import (
    ZSRE_TARGETS,
    data_info,
    default_data_dir,
    load_counterfact,
    load_requests,
    load_zsre,
    requests_to_dataset,
    to_requests,
)
from repedit.eval.metrics import (
    FLUENCY,
    GENERATION,
    PROBABILITY,
    PROTOCOLS,
    TEACHER_FORCED,
    TargetScores,
    build_case_records,
    case_record,
    compute_n_gram_entropy,
    evaluate_requests,
    file_sha256,
    fluency,
    generate_text,
    generation_match,
    harmonic_mean,
    locality_agreement,
    n_gram_entropy,
    predict_target_tokens,
    probability_scores,
    results_metadata,
    score_targets,
    summarize,
    token_accuracy,
    truncate_answer,
)
from repedit.eval.harness import EvalReport, evaluate, evaluate_pre, run_sequential, run_sequential_protocols

# (the sweep *function* stays in repedit.eval.sweep: exporting it here would shadow that module)
from repedit.eval.sweep import SweepResult, knobs, pareto_plot, scope_auc, scope_scores

__all__ = [
    "ZSRE_TARGETS",
    "data_info",
    "default_data_dir",
    "load_counterfact",
    "load_requests",
    "load_zsre",
    "requests_to_dataset",
    "to_requests",
    "FLUENCY",
    "GENERATION",
    "PROBABILITY",
    "PROTOCOLS",
    "TEACHER_FORCED",
    "TargetScores",
    "build_case_records",
    "case_record",
    "compute_n_gram_entropy",
    "evaluate_requests",
    "file_sha256",
    "fluency",
    "generate_text",
    "generation_match",
    "harmonic_mean",
    "locality_agreement",
    "n_gram_entropy",
    "predict_target_tokens",
    "probability_scores",
    "results_metadata",
    "score_targets",
    "summarize",
    "token_accuracy",
    "truncate_answer",
    # orchestration (pre/post harness, sequential protocols, knob sweeps): harness.py, sweep.py, distributed.py
    "EvalReport",
    "evaluate",
    "evaluate_pre",
    "run_sequential",
    "run_sequential_protocols",
    "SweepResult",
    "knobs",
    "pareto_plot",
    "scope_auc",
    "scope_scores",
]
