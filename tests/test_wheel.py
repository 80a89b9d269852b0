"""The built wheel, installed into a clean virtual environment away from the repository (no
../shared beside it), edits, saves, reloads and evaluates on the real default model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    import repedit
    from repedit import Editor, EditorConfig, EditRequest, models

    here = Path.cwd()
    assert Path(repedit.__file__).resolve().is_relative_to(Path(sys.prefix).resolve()), repedit.__file__
    assert not (here.parent / "shared").exists() and "REPEDIT_DATA" not in __import__("os").environ
    req = EditRequest(prompt="The Eiffel Tower is located in the city of", target_new="Rome", subject="Eiffel Tower")
    from repedit.relations import builtin_relations
    out = {"package": repedit.__file__, "default_method": EditorConfig().method, "relations": len(builtin_relations())}
    for method in ("baft", "codebook"):
        model, tok = models.load("smollm2-135m")
        editor = Editor(model, tok, EditorConfig(method=method))
        res = editor.edit(req)
        res.save_pretrained(str(here / method))
        x = tok([req.prompt], return_tensors="pt")
        with torch.no_grad():
            edited_logits = model(**x).logits
        fresh, tok2 = models.load("smollm2-135m")
        reloaded = repedit.load_adapter(fresh, str(here / method), tokenizer=tok2)
        with torch.no_grad():
            same = torch.equal(fresh(**x).logits, edited_logits)
        out[method] = {"success": res.outcomes[0].success, "target_prob": res.outcomes[0].target_prob,
                       "reloaded_identical": same, "corpus": editor.corpus.source,
                       "completion": reloaded.generate([req.prompt], max_new_tokens=3)[0]}
    print(json.dumps(out))
''')


@pytest.mark.slow
def test_installed_wheel_works_outside_the_repository(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist),
                    str(ROOT)], check=True, cwd=tmp_path)
    wheels = list(dist.glob("repedit-*.whl"))
    assert len(wheels) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # reuse the already-installed dependencies (a plain path: the repository's editable
    # install of repedit, a .pth hook there, is not activated), the package from the wheel
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])], check=True)

    work = tmp_path / "user" / "project"
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("REPEDIT_DATA", "PYTHONPATH")}
    run = subprocess.run([str(py), "-c", SCRIPT], cwd=work, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert str(venv) in out["package"] and out["default_method"] == "baft"
    assert out["relations"] == 68  # the relation table is shipped in the wheel
    for method in ("baft", "codebook"):
        assert out[method]["success"] and out[method]["reloaded_identical"], out
        assert out[method]["corpus"] == "repedit:wikitext2-test.raw.gz"
        assert "Rome" in out[method]["completion"], out

    # `repedit eval` from the wheel's console script, on the reloaded adapter
    data = work / "requests.jsonl"
    data.write_text(json.dumps({"prompt": "The Eiffel Tower is located in the city of", "target_new": "Rome",
                                "subject": "Eiffel Tower", "rephrase_prompts": ["The Eiffel Tower stands in the city of"],
                                "locality_prompts": [{"prompt": "The Brandenburg Gate is located in the city of",
                                                      "ground_truth": "Berlin"}]}) + "\n")
    metrics = work / "metrics.json"
    ev = subprocess.run([str(venv / "bin" / "repedit"), "eval", "--adapter", str(work / "baft"), "--data", str(data),
                         "--out", str(metrics)], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads(metrics.read_text())
    flat = json.dumps(report["summary"])
    assert '"rewrite_acc"' in flat and len(report["records"]) == 1, flat
    assert report["records"][0]["post"]["rewrite_acc"] == [1.0], report["records"][0]
