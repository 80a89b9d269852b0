"""repedit.checkpoints: an interrupted sequential run resumed from its checkpoint ends where an
uninterrupted run ends; a checkpoint of other requests or another config is refused."""

import json

import pytest
import torch

from benchmarks.checkpoints import cached, cached_in_chunks, lookup
from repedit.checkpoints import CheckpointMismatch, SequentialCheckpoint
from repedit import EditRequest, Editor, EditorConfig
from repedit.hooks import EditableModel

from conftest import tiny_model

REQS = [
    EditRequest(prompt="the capital of france is", target_new="rome", subject="france"),
    EditRequest(prompt="danielle darrieux speaks", target_new="german", subject="danielle darrieux"),
    EditRequest(prompt="the eiffel tower is located in", target_new="madrid", subject="eiffel tower"),
]
CFG = dict(method="baft", layers=[1], positions="prompt", augment=0, lr=5e-2, max_steps=30, stop_prob=0.5,
           method_config={"num_corpus_negatives": 0, "seed": 0})
CONFIGS = {"baft": CFG, "loreft": dict(CFG, method="loreft", positions="last_prompt", method_config={"rank": 2}),
           "codebook": dict(CFG, method="codebook", positions="last_prompt", lr=0.1,
                            method_config={"corpus_sentences": 0, "num_names": 0,
                                           "value": "lowrank", "value_rank": 2})}


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("method", ["baft", "loreft", "codebook"])
def test_interrupted_run_resumes_to_the_same_adapter(tmp_path, tok, method):
    CFG = dict(CONFIGS[method])
    ident = {"config": CFG, "cases": [0, 1, 2]}
    full = Editor(tiny_model("llama", initializer_range=0.5), tok, EditorConfig(**CFG))
    full_res = full.edit(REQS, sequential=True)
    want = full.attachments()[0].module.state_dict()

    # first process: checkpoints every edit, killed after the second one
    ed1 = EditableModel(tiny_model("llama", initializer_range=0.5), tok)
    ck = SequentialCheckpoint(tmp_path, "baft", every=1, identity=ident)
    assert ck.restore(ed1, "default") == (0, [], 0.0)
    save = ck.callback(ed1, "default", len(REQS))

    def cb(done, outcomes):
        save(done, outcomes)
        if done == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        Editor(ed1, tok, EditorConfig(**CFG)).edit(REQS, sequential=True, callback=cb)
    state = json.loads((tmp_path / "baft" / "state.json").read_text())
    assert state["done"] == 2 and state["step_dir"] == "step_000002"
    assert sorted(p.name for p in (tmp_path / "baft").glob("step_*")) == ["step_000002"]  # older ones dropped

    # second process: restore, continue from edit 2
    ed2 = EditableModel(tiny_model("llama", initializer_range=0.5), tok)
    ck2 = SequentialCheckpoint(tmp_path, "baft", every=1, identity=ident)
    done, outcomes, seconds = ck2.restore(ed2, "default")
    assert done == 2 and [o.index for o in outcomes] == [0, 1] and seconds > 0
    editor2 = Editor(ed2, tok, EditorConfig(**CFG))
    res = editor2.edit(REQS, sequential=True, start=done, callback=ck2.callback(ed2, "default", len(REQS)))
    assert [o.steps for o in outcomes + res.outcomes] == [o.steps for o in full_res.outcomes]
    got = editor2.attachments()[0].module.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    final = json.loads((tmp_path / "baft" / "state.json").read_text())
    assert final["done"] == 3 and len(final["outcomes"]) == 3

    # a checkpoint written for other requests is refused, and nothing is loaded
    ed3 = EditableModel(tiny_model("llama", initializer_range=0.5), tok)
    with pytest.raises(CheckpointMismatch, match="other requests"):
        SequentialCheckpoint(tmp_path, "baft", every=1, identity={"config": CFG, "cases": [5, 6, 7]}).restore(ed3, "default")
    assert ed3.attachments() == []


def test_cached_reuses_only_a_matching_identity(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"n": len(calls)}

    assert cached(tmp_path, "pre", {"cases": [1, 2]}, compute) == {"n": 1}
    assert cached(tmp_path, "pre", {"cases": (1, 2)}, compute) == {"n": 1}  # tuple == list after JSON
    assert cached(tmp_path, "pre", {"cases": [1, 3]}, compute) == {"n": 2}
    assert len(calls) == 2


def test_cached_in_chunks_resumes_an_interrupted_pass_at_its_first_missing_part(tmp_path):
    """A long scoring pass kept in parts: after an interruption only the missing parts are
    computed, the joined list equals one uninterrupted pass, and the parts are removed."""
    calls = []

    def compute(lo, hi):
        calls.append((lo, hi))
        if len(calls) == 3 and not getattr(compute, "resumed", False):
            raise Interrupt
        return [i * i for i in range(lo, hi)]

    with pytest.raises(Interrupt):
        cached_in_chunks(tmp_path, "pre", {"cases": 10}, 10, compute, chunk=4)
    assert calls == [(0, 4), (4, 8), (8, 10)]
    assert sorted(f.name for f in (tmp_path / "pre.parts").glob("*.json")) == ["0000000.json", "0000004.json"]
    assert not (tmp_path / "pre.json").exists()
    compute.resumed = True
    assert cached_in_chunks(tmp_path, "pre", {"cases": 10}, 10, compute, chunk=4) == [i * i for i in range(10)]
    assert calls[3:] == [(8, 10)]  # only the part the interruption lost
    assert not (tmp_path / "pre.parts").exists()
    assert lookup(tmp_path, "pre", {"cases": 10}) == (True, [i * i for i in range(10)])  # what cached() reads
    assert cached_in_chunks(tmp_path, "pre", {"cases": 10}, 10, compute, chunk=3) == [i * i for i in range(10)]
    assert len(calls) == 4  # the joined file is reused whatever the part size
    with pytest.raises(ValueError, match="holds 1 values, not 2"):
        cached_in_chunks(tmp_path, "short", {}, 2, lambda lo, hi: [0])


def _bench_setup(tok, monkeypatch):
    """Three scorable requests, a tiny model, its EditableModel and the unedited scores, with
    bench_baft's protocols cut to the fast ones."""
    from dataclasses import replace

    from benchmarks import bench_baft
    from repedit.eval import metrics
    from repedit.requests import LocalityPrompt

    reqs = [replace(r, case_id=i, rephrase_prompts=[r.prompt.replace("the ", "so the ")],
                    locality_prompts=[LocalityPrompt("the capital of spain is", "madrid")])
            for i, r in enumerate(REQS)]
    model = tiny_model("llama", initializer_range=0.5)
    monkeypatch.setattr(bench_baft, "PROTOCOLS", ["teacher_forced", "probability"])
    pre = metrics.evaluate_requests(model, tok, reqs, protocols=bench_baft.PROTOCOLS)
    return bench_baft, metrics, reqs, model, EditableModel(model, tok), pre


def test_bench_baft_scores_a_finished_checkpoint_once(tmp_path, tok, monkeypatch):
    """bench_baft keeps the post-edit scores of a finished sequential checkpoint, so the joint
    table of several long runs re-scores none of them."""
    bench_baft, metrics, reqs, model, edited, pre = _bench_setup(tok, monkeypatch)
    calls, real = [], metrics.evaluate_requests
    monkeypatch.setattr(metrics, "evaluate_requests", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(cfg):
        return bench_baft.run_setting("baft", cfg, reqs, pre, model, tok, edited, True, lambda m: None,
                                      checkpoint_dir=tmp_path, every=1)[0]

    first = run(CFG)
    assert len(calls) == 1 and (tmp_path / "post_baft_seq3.json").is_file()
    # the cost columns beside every table
    assert first["fwd_bwd_s"] > 0 and first["edit_over_fwd_bwd"] == pytest.approx(first["s_per_edit"] / first["fwd_bwd_s"])
    assert first["peak_mib"] > 50  # the process's resident peak: torch alone is more
    assert first["adapter_bytes"] > 0 and first["bytes_per_edit"] == pytest.approx(first["adapter_bytes"] / 3)
    assert not edited.attachments()  # neither the timing probe nor an empty attachment is left
    again = run(CFG)  # restored from the finished checkpoint: scores reused
    assert len(calls) == 1
    assert {k: again[k] for k in ("efficacy", "rewrite_acc", "locality")} == \
        {k: first[k] for k in ("efficacy", "rewrite_acc", "locality")}
    with pytest.raises(CheckpointMismatch):  # another config's run is not mistaken for this one
        run(dict(CFG, lr=1e-2))
    with pytest.raises(CheckpointMismatch):  # later edits were trained against earlier ones at −4
        run(dict(CFG, method_config=dict(CFG["method_config"], gate_shift=-60.0)))


def test_bench_baft_resumes_an_interrupted_scoring_pass(tmp_path, tok, monkeypatch):
    """The post-edit scores of a long run are kept in parts: a scoring pass interrupted after its
    first part scores only the rest when the same command runs again, to the same table."""
    from benchmarks import checkpoints

    bench_baft, metrics, reqs, model, edited, pre = _bench_setup(tok, monkeypatch)
    monkeypatch.setattr(checkpoints, "SCORE_CHUNK", 1)
    calls, real = [], metrics.evaluate_requests

    def counting(*a, **k):
        calls.append(len(a[2]))
        if len(calls) == 2 and not tmp_path.joinpath("resumed").exists():
            raise Interrupt
        return real(*a, **k)

    monkeypatch.setattr(metrics, "evaluate_requests", counting)
    run = lambda d: bench_baft.run_setting("baft", CFG, reqs, pre, model, tok, edited, True,  # noqa: E731
                                           lambda m: None, checkpoint_dir=d, every=1)[0]
    with pytest.raises(Interrupt):
        run(tmp_path / "a")
    assert calls == [1, 1] and len(list((tmp_path / "a" / "post_baft_seq3.parts").glob("*.json"))) == 1
    for adapter in edited.adapters():  # what the killed process held
        edited.delete_adapter(adapter)
    tmp_path.joinpath("resumed").touch()
    row = run(tmp_path / "a")
    assert calls[2:] == [1, 1]  # records 1 and 2 only: record 0's part was kept
    assert (tmp_path / "a" / "post_baft_seq3.json").is_file() and not (tmp_path / "a" / "post_baft_seq3.parts").exists()
    whole = run(tmp_path / "b")  # the same run, never interrupted
    assert {k: row[k] for k in ("rewrite_acc", "rephrase_acc", "locality", "efficacy")} == \
        {k: whole[k] for k in ("rewrite_acc", "rephrase_acc", "locality", "efficacy")}


def test_bench_baft_gate_shift_is_an_inference_knob_when_earlier_edits_train_unshifted(tmp_path, tok, monkeypatch):
    """With earlier edits run as in training (unshifted), a sequential checkpoint is the same
    under any gate_shift: another shift scores it anew without editing again."""
    bench_baft, metrics, reqs, model, edited, pre = _bench_setup(tok, monkeypatch)
    calls, real = [], metrics.evaluate_requests
    monkeypatch.setattr(metrics, "evaluate_requests", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = dict(CFG, method_config=dict(CFG["method_config"], train_as_inference="none"))

    def run(cfg):
        return bench_baft.run_setting("baft", cfg, reqs, pre, model, tok, edited, True, lambda m: None,
                                      checkpoint_dir=tmp_path, every=1)[0]

    run(base)
    run(dict(base, method_config=dict(base["method_config"], gate_shift=-60.0)))
    assert len(calls) == 2  # same checkpoint, another inference knob: scored anew
    run(base)
    assert len(calls) == 3  # one cached score per checkpoint: the knob's last value
    assert bench_baft.sequential_identity(base) == {}
    assert bench_baft.sequential_identity(CFG) == {"train_as_inference": "earlier", "gate_shift": -4.0}


def test_bench_baft_inference_knobs_are_not_part_of_a_checkpoint(tmp_path, tok):
    """A checkpoint saved with one gate_shift resumes under another (the shift acts only at
    inference), and the restored module takes the run's value, not the saved one."""
    from benchmarks import bench_baft

    ident_a = bench_baft.training_config(dict(CFG, method_config=dict(CFG["method_config"], gate_shift=0.0)))
    ident_b = bench_baft.training_config(CFG)
    assert ident_a == ident_b and "gate_shift" not in ident_a["method_config"]
    ed = EditableModel(tiny_model("llama", initializer_range=0.5), tok)
    Editor(ed, tok, EditorConfig(**dict(CFG, method_config=dict(CFG["method_config"], gate_shift=0.0)))).edit(REQS[0])
    assert ed.attachments()[0].module.config.gate_shift == 0.0
    bench_baft.set_inference_knobs(ed, CFG)  # CFG sets none: BaFT's default
    assert ed.attachments()[0].module.config.gate_shift == -4.0
    bench_baft.set_inference_knobs(ed, dict(CFG, method_config=dict(CFG["method_config"], gate_shift=-7.0)))
    assert ed.attachments()[0].module.config.gate_shift == -7.0


def test_bench_baft_single_edits_resume_from_their_cache(tmp_path, tok, monkeypatch):
    """With a checkpoint dir, each single edit's outcome and scores are kept: a rerun (an
    interrupted run, or the joint table) edits only the last request again (for the latency
    measurement) and gives the same row; another config or base model edits everything anew."""
    bench_baft, metrics, reqs, model, edited, pre = _bench_setup(tok, monkeypatch)
    edits, real = [], Editor.edit
    monkeypatch.setattr(Editor, "edit", lambda self, *a, **k: edits.append(1) or real(self, *a, **k))

    def run(cfg, n=3):
        return bench_baft.run_setting("baft", cfg, reqs[:n], pre[:n], model, tok, edited, False, lambda m: None,
                                      checkpoint_dir=tmp_path)[0]

    part = run(CFG, n=2)  # "interrupted" after two edits
    assert len(edits) == 2
    first = run(CFG)
    assert len(edits) == 3  # only the third is edited
    again = run(CFG)
    assert len(edits) == 4  # all cached; the last one is applied again for the latency measurement
    keys = ("efficacy", "paraphrase", "locality", "rewrite_acc", "success_rate", "mean_steps", "s_per_edit")
    assert {k: again[k] for k in keys} == {k: first[k] for k in keys}
    assert part["s_per_edit"] * 2 < first["s_per_edit"] * 3
    assert first["edit_over_fwd_bwd"] == pytest.approx(first["s_per_edit"] / first["fwd_bwd_s"])
    assert "bytes_per_edit" not in first  # single edits keep no adapter
    run(dict(CFG, lr=1e-2))
    assert len(edits) == 7  # another config: every edit anew
    assert len(list(tmp_path.glob("single_baft_*/*.json"))) == 6
    model = tiny_model("llama", initializer_range=0.3)  # another base model: anew too
    edited = EditableModel(model, tok)
    pre = metrics.evaluate_requests(model, tok, reqs, protocols=bench_baft.PROTOCOLS)
    run(CFG)
    assert len(edits) == 10


def test_bench_baft_single_edit_shards_fill_one_cache(tmp_path, tok, monkeypatch):
    """Two shards (0/2, 1/2) edit disjoint halves of the single edits and write no row; the
    plain run then edits only the last request again (latency) and gives the unsharded row."""
    bench_baft, metrics, reqs, model, edited, pre = _bench_setup(tok, monkeypatch)
    edited_ids, real = [], Editor.edit
    monkeypatch.setattr(Editor, "edit", lambda self, r, *a, **k: edited_ids.append(r.case_id) or real(self, r, *a, **k))

    def run(shard=None, ck=tmp_path):
        return bench_baft.run_setting("baft", CFG, reqs[:3], pre[:3], model, tok, edited, False, lambda m: None,
                                      checkpoint_dir=ck, shard=shard)

    assert run((0, 2)) == (None, None)
    assert edited_ids == [reqs[0].case_id, reqs[2].case_id]
    assert run((1, 2)) == (None, None)
    assert edited_ids[2:] == [reqs[1].case_id]
    row, _ = run()
    assert edited_ids[3:] == [reqs[2].case_id]  # all cached; the last applied again for the latency
    plain, _ = run(ck=tmp_path / "plain")
    keys = ("efficacy", "paraphrase", "locality", "rewrite_acc", "success_rate", "mean_steps")
    assert {k: row[k] for k in keys} == {k: plain[k] for k in keys}
    with pytest.raises(SystemExit):
        bench_baft.main(["--single", "3", "--sequential", "0", "--shard", "2/2", "--checkpoint-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        bench_baft.main(["--single", "3", "--sequential", "4", "--shard", "0/2", "--checkpoint-dir", str(tmp_path)])


@pytest.mark.parametrize("adapter", ["default", "ns"])
def test_gate_shift_sweep_scores_one_checkpoint_at_each_shift(tmp_path, tok, monkeypatch, adapter):
    """bench_gate_shift loads a sequential checkpoint once and scores it at every shift: a huge
    negative shift gives back the unedited model's predictions; cached unedited scores made
    with other protocols are not reused."""
    import json

    from benchmarks import bench_gate_shift, common
    import repedit.models

    bench_baft, metrics, reqs, model, edited, pre = _bench_setup(tok, monkeypatch)
    ck = tmp_path / "ck"
    cfg = dict(CFG, adapter=adapter, method_config=dict(CFG["method_config"], gate_shift=0.0))
    bench_baft.run_setting("baft", cfg, reqs, pre, model, tok, edited, True, lambda m: None, checkpoint_dir=ck, every=1,
                           milestones=(2,))
    (ck / "pre_counterfact_3.json").write_text(json.dumps(  # other protocols: must be ignored
        {"identity": {"cases": [0, 1, 2], "protocols": ["generation"]}, "value": [{}, {}, {}]}))
    monkeypatch.setattr(repedit.models, "load", lambda *a, **k: (tiny_model("llama", initializer_range=0.5), tok))
    monkeypatch.setattr(bench_gate_shift, "select_requests", lambda n, **k: (reqs[:n], {"source": "test"}))
    real = common.write_results
    monkeypatch.setattr(bench_gate_shift, "write_results", lambda *a, **k: real(*a, directory=tmp_path / "res", **k))
    bench_gate_shift.main(["--checkpoint-dir", str(ck), "--key", "baft_seq3", "--shifts", "0,-60", "--stride", "1"])
    rows = json.loads((tmp_path / "res" / "gate_shift_baft_seq3.json").read_text())["rows"]
    base = bench_baft.flat(metrics.summarize(metrics.build_case_records(reqs, pre, pre)))
    assert [r["gate_shift"] for r in rows] == [0.0, -60.0] and rows[0]["scored"] == 3
    bench_gate_shift.main(["--checkpoint-dir", str(ck), "--key", "baft_seq3", "--shifts", "0", "--stride", "1",
                           "--milestone", "2", "--name", "at2"])  # the state after the first 2 edits
    (at2,) = json.loads((tmp_path / "res" / "at2.json").read_text())["rows"]
    assert at2["edits"] == 2 and at2["scored"] == 2
    with pytest.raises(SystemExit, match="milestone"):
        bench_gate_shift.main(["--checkpoint-dir", str(ck), "--key", "baft_seq3", "--milestone", "1"])
    assert rows[1]["locality"] == 1.0 and rows[1]["rewrite_acc"] == base["rewrite_acc"]
    assert rows[0]["rewrite_acc"] > base["rewrite_acc"]
    bench_gate_shift.main(["--checkpoint-dir", str(ck), "--key", "baft_seq3", "--shifts", "", "--stride", "1",
                           "--name", "as_saved"])  # as saved: the run's own shift (0 here)
    (row,) = json.loads((tmp_path / "res" / "as_saved.json").read_text())["rows"]
    assert row["gate_shift"] is None and row["rewrite_acc"] == rows[0]["rewrite_acc"]
    # unedited scores kept the way bench_baft keeps them are reused: only the edited model is scored
    from benchmarks.checkpoints import cached

    env = common.environment(model, "smollm2-135m")
    cached(ck, *bench_baft.unedited_cache(env, "counterfact", bench_gate_shift.PROTOCOLS, reqs, "cpu"), lambda: pre)
    calls, real_eval = [], metrics.evaluate_requests
    monkeypatch.setattr(metrics, "evaluate_requests", lambda *a, **k: calls.append(1) or real_eval(*a, **k))
    bench_gate_shift.main(["--checkpoint-dir", str(ck), "--key", "baft_seq3", "--shifts", "", "--stride", "1",
                           "--name", "as_saved_cached"])
    assert len(calls) == 1
    (again,) = json.loads((tmp_path / "res" / "as_saved_cached.json").read_text())["rows"]
    assert again["rewrite_acc"] == row["rewrite_acc"] and again["locality"] == row["locality"]


def test_knob_sweep_scores_a_codebook_checkpoint_at_each_radius_scale(tmp_path, tok, monkeypatch):
    """bench_gate_shift sweeps any knob the checkpoint's interventions have: a codebook's radius
    scale trades the edits' reach for the neighbours' answers; with the generation protocol the rows carry greedy-generation match; a knob the interventions lack
    is refused, naming it."""
    import json

    from benchmarks import bench_gate_shift, common
    import repedit.models

    bench_baft, metrics, reqs, model, edited, pre = _bench_setup(tok, monkeypatch)
    ck = tmp_path / "ck"
    cfg = dict(CONFIGS["codebook"], layers=[0], max_steps=40,  # tiny models edit fastest at the last token
               method_config={"corpus_sentences": 0, "num_names": 0, "value_positions": "attachment"})
    bench_baft.run_setting("codebook", cfg, reqs, pre, model, tok, edited, True, lambda m: None,
                           checkpoint_dir=ck, every=1)
    monkeypatch.setattr(repedit.models, "load", lambda *a, **k: (tiny_model("llama", initializer_range=0.5), tok))
    monkeypatch.setattr(bench_gate_shift, "select_requests", lambda n, **k: (reqs[:n], {"source": "test"}))
    real = common.write_results
    monkeypatch.setattr(bench_gate_shift, "write_results", lambda *a, **k: real(*a, directory=tmp_path / "res", **k))
    bench_gate_shift.main(["--checkpoint-dir", str(ck), "--key", "codebook_seq3", "--knob", "radius_scale",
                           "--values", "1,0", "--stride", "1", "--protocols", "teacher_forced,probability,generation"])
    data = json.loads((tmp_path / "res" / "radius_scale_codebook_seq3.json").read_text())
    rows = data["rows"]
    assert data["knob"] == "radius_scale" and [r["radius_scale"] for r in rows] == [1.0, 0.0]
    # scale 1: every edit (and, with no negatives on a tiny model, the neighbours too); scale 0:
    # only a prompt whose key is the entry's own, so the neighbours keep their answers
    assert rows[0]["rewrite_acc"] == rows[0]["rephrase_acc"] == 1.0 and rows[0]["locality"] < 1.0
    assert rows[1]["locality"] == rows[1]["gen_loc_agree"] == 1.0 and rows[1]["rephrase_acc"] < 1.0
    assert "gen_rephrase" in rows[0]
    with pytest.raises(SystemExit, match="no knob 'gate_shift'"):
        bench_gate_shift.main(["--checkpoint-dir", str(ck), "--key", "codebook_seq3", "--values", "-4"])


def test_milestones_keep_the_state_after_k_edits_and_the_bench_scores_them(tmp_path, tok, monkeypatch):
    """keep=(2,): the state after 2 of 3 edits is kept beside the last checkpoint, restores to the
    adapter the run had then, and bench_baft scores it as its own row on the first 2 requests."""
    bench_baft, metrics, reqs, model, edited, pre = _bench_setup(tok, monkeypatch)
    at2 = []
    ed = EditableModel(tiny_model("llama", initializer_range=0.5), tok)
    ck = SequentialCheckpoint(tmp_path / "ck", "baft", every=3, identity={"config": CFG, "cases": [0, 1, 2]}, keep=(2,))
    save = ck.callback(ed, "default", 3)

    def cb(done, outcomes):
        save(done, outcomes)
        if done == 2:
            at2.append({k: v.clone() for k, v in ed.attachments()[0].module.state_dict().items()})

    Editor(ed, tok, EditorConfig(**CFG)).edit(REQS, sequential=True, callback=cb)
    assert ck.milestones() == [2] and ck.state()["done"] == 3
    assert sorted(p.name for p in (tmp_path / "ck" / "baft").glob("step_*")) == ["step_000003"]
    ed2 = EditableModel(tiny_model("llama", initializer_range=0.5), tok)
    done, outcomes, _ = ck.restore(ed2, "default", milestone=2)
    assert done == 2 and [o.index for o in outcomes] == [0, 1]
    got = ed2.attachments()[0].module.state_dict()
    assert got.keys() == at2[0].keys() and all(torch.equal(got[k], at2[0][k]) for k in got)
    with pytest.raises(FileNotFoundError, match="milestone"):
        ck.restore(ed2, "default", milestone=1)
    with pytest.raises(ValueError, match="milestones"):
        SequentialCheckpoint(tmp_path, "bad", every=1, identity={}, keep=(0,))

    row, det = bench_baft.run_setting("baft", CFG, reqs, pre, model, tok, edited, True, lambda m: None,
                                      checkpoint_dir=tmp_path / "b", every=1, milestones=(2,), latency_repeats=1)
    (m,) = det["milestone_rows"]
    assert m["setting"] == "after 2 of 3 sequential" and row["setting"] == "3 sequential"
    assert 0 < m["adapter_bytes"] < row["adapter_bytes"]  # the adapter grows with its edits
    assert (tmp_path / "b" / "post_baft_seq3_at2.json").is_file() and edited.attachments() == []
    # --score-milestones: the milestones alone, nothing edited, the unedited scores of what they cover
    none, only = bench_baft.run_setting("baft", CFG, reqs, pre[:2], model, tok, edited, True, lambda m: None,
                                        checkpoint_dir=tmp_path / "b", every=1, milestones=(2,), milestones_only=True)
    assert none is None and [r["setting"] for r in only["milestone_rows"]] == ["after 2 of 3 sequential"]
    assert only["milestone_rows"][0]["rewrite_acc"] == m["rewrite_acc"] and edited.attachments() == []


def test_bench_identity_tells_the_codebooks_old_default_lr_from_the_new(tok):
    """Runs at the codebook's default lr (0.2 since session 16) never reuse checkpoints made at
    the old default (0.1, not in the identity then); an explicit lr is already in the config."""
    from benchmarks import bench_baft

    model = tiny_model("llama")
    cb = CONFIGS["codebook"]
    default = Editor(model, tok, EditorConfig(**{k: v for k, v in cb.items() if k != "lr"}))
    assert default.config.lr == 0.2 and bench_baft.resolved_identity(default, {})["lr"] == 0.2
    old = Editor(model, tok, EditorConfig(**dict(cb, lr=0.1)))
    assert "lr" not in bench_baft.resolved_identity(old, {"lr": 0.1})
    explicit = Editor(model, tok, EditorConfig(**dict(cb, lr=0.2)))
    assert "lr" not in bench_baft.resolved_identity(explicit, {"lr": 0.2})


def test_probe_continue_resumes_a_milestone_once_per_variant(tmp_path, tok, monkeypatch):
    """probe_continue restores the same milestone for every variant and edits the run's next
    requests; with train_as_inference='all' an edit verifies exactly as it trained."""
    import shlex

    from benchmarks import common, probe_continue
    import repedit.models

    bench_baft, metrics, reqs, model, edited, pre = _bench_setup(tok, monkeypatch)
    run_args = ("--single 0 --sequential 3 --methods baft --layer 1 --positions prompt --relation-copies 0 --augment 0 "
                "--lr 0.05 --max-steps 30 --stop-prob 0.5 --answer-end '' "
                "--baft-config '{\"num_corpus_negatives\": 0, \"seed\": 0}'")
    cfg = bench_baft.method_configs(bench_baft.build_parser().parse_args(shlex.split(run_args)))["baft"]
    ck = tmp_path / "ck"
    bench_baft.run_setting("baft", cfg, reqs, None, model, tok, edited, True, lambda m: None,
                           checkpoint_dir=ck, every=1, milestones=(1,))
    monkeypatch.setattr(repedit.models, "load", lambda *a, **k: (model, tok))
    monkeypatch.setattr(probe_continue, "select_requests", lambda n, **k: (reqs[:n], {"source": "test"}))
    real = common.write_results
    monkeypatch.setattr(probe_continue, "write_results", lambda *a, **k: real(*a, directory=tmp_path / "res", **k))
    variants = '[{"train_as_inference": "none"}, {"train_as_inference": "all"}]'
    probe_continue.main(["--checkpoint-dir", str(ck), "--run-args", run_args, "--milestone", "1", "--n", "2",
                         "--variants", variants, "--name", "c"])
    rows = json.loads((tmp_path / "res" / "c.json").read_text())["rows"]
    assert [json.loads(r["variant"]) for r in rows] == json.loads(variants)
    assert all(r["edits"] == 2 for r in rows)  # requests 2 and 3 after the milestone's first
    assert rows[1]["target_prob"] == pytest.approx(rows[1]["trained_target_prob"], abs=1e-4)
    with pytest.raises(SystemExit):  # no such milestone kept
        probe_continue.main(["--checkpoint-dir", str(ck), "--run-args", run_args, "--milestone", "2",
                             "--variants", variants, "--name", "c"])
