"""Decontamination covers every configured evaluation set, benchmark files included."""

from __future__ import annotations

import json

from prismatic_assets.infra.config import build_config
from prismatic_assets.core.samples import Sample
from prismatic_assets.pipeline.evaluation import decontamination_texts, held_out_sets
from prismatic_assets.store.store import MetadataStore


def test_every_evaluation_set_is_decontaminated_against(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    held = [Sample(f"unit:h{i}", f"Held-out problem number {i} about prime gaps.", "x", source="unit")
            for i in range(5)]
    store.replace_samples(source="unit", origin="seed", samples=held, splits={s.sample_id: "holdout" for s in held},
                          rejections=[], run_id="r")
    bench = tmp_path / "math500.jsonl"
    bench.write_text("\n".join(json.dumps({"problem": f"Benchmark problem {i}: find x.", "answer": str(i)})
                               for i in range(3)))
    ev = build_config({"evaluation": {"gsm_symbolic": 2, "holdout": True, "holdout_limit": 2,
                                      "files": [str(bench)]}}).evaluation
    ids = [s.sample_id for s in held]
    texts = decontamination_texts(store, "unit", ids, ev)
    assert set(texts) == {"gsm_symbolic", "unit_holdout", "math500"}
    assert len(texts["unit_holdout"]) == 5  # every held-out problem, though evaluation uses the first 2
    assert texts["math500"] == [f"Benchmark problem {i}: find x." for i in range(3)]
    assert len(texts["gsm_symbolic"]) == 2
    assert len(held_out_sets(store, "unit", ids, ev)["unit_holdout"]) == 2
    # Evaluation switched off for the hold-out split: it is still kept out of the synthetic data.
    no_holdout = build_config({"evaluation": {"gsm_symbolic": 0, "holdout": False}}).evaluation
    assert set(decontamination_texts(store, "unit", ids, no_holdout)) == {"unit_holdout"}
