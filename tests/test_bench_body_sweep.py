"""`bench/body_sweep.py`'s own logic: every variant is a valid stage-2 setting, the graph keeps at most
`--parallel` trainings at once and scores each model after its training, and the table reads the scores."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import body_sweep, learns  # noqa: E402


@pytest.fixture
def learns_folder(tmp_path):
    """A learns folder as the sweep reads it: ``vae/`` is a train-vae run (its config.json says so)."""
    (tmp_path / "learns" / "vae").mkdir(parents=True)
    (tmp_path / "learns" / "vae" / "config.json").write_text(json.dumps({"task": "vae"}))
    return tmp_path / "learns"


@pytest.mark.parametrize("name", sorted(body_sweep.VARIANTS))
def test_every_variant_is_the_chains_stage_2_with_its_overrides(name, tmp_path, learns_folder):
    chain = learns.CHAIN["cpu"]
    config = body_sweep.body_config(
        str(tmp_path / "learns"), str(tmp_path / name), chain, body_sweep.VARIANTS[name]
    )
    config.validate()
    assert config.manifest == (str(tmp_path / "learns" / "manifest"),)
    assert config.pretrained == str(tmp_path / "learns" / "vae")
    assert config.resolution == chain["body"]["resolution"] and config.train_base_unet
    shared = {**learns.BODY_TRAINING, **chain["body"]}  # the chain's stage-2 settings, as learns passes them
    changed = {k for k in shared if getattr(config, k) != shared[k]}
    overrides = body_sweep.VARIANTS[name]
    assert changed == ({"steps"} if "steps_scale" in overrides else set(overrides) & set(shared))
    if "steps_scale" in overrides:
        assert config.steps == round(chain["body"]["steps"] * overrides["steps_scale"])
    for key, value in overrides.items():
        if key != "steps_scale":
            assert getattr(config, key) == value


def test_the_graph_scores_each_variant_after_training_it_before_the_next_training(tmp_path, learns_folder):
    names = ["chain", "lr_1e-3", "no_ema", "uncached"]
    graph = body_sweep.sweep_graph(str(learns_folder), str(tmp_path / "w"), names, learns.CHAIN["quick"])
    assert list(graph) == [f"{p}_{n}" for n in names for p in ("train", "score")]  # the priority order
    needs = {k: v[2] for k, v in graph.items()}
    assert all(needs[f"train_{n}"] == () and needs[f"score_{n}"] == (f"train_{n}",) for n in names)
    assert all(v[3] == 1 for v in graph.values())
    # On two cores: two trainings, then the first one's scoring before the third training.
    running = learns.Phases.startable(graph, set(), busy=0, cores=2)
    assert running == ["train_chain", "train_lr_1e-3"]
    rest = {k: v for k, v in graph.items() if k not in running}
    assert learns.Phases.startable(rest, {"train_chain"}, busy=1, cores=2) == ["score_chain"]
    assert graph["score_no_ema"][1][0] == str(tmp_path / "w" / "no_ema")  # scores the run it trained
    assert graph["train_chain"][1][0].seed == 0
    seeded = body_sweep.sweep_graph(str(learns_folder), str(tmp_path / "w"), names, learns.CHAIN["quick"], 7)
    assert all(seeded[f"train_{n}"][1][0].seed == 7 for n in names)


def test_the_table_shows_each_variants_scores_and_the_vae_cap():
    def stage2(share, pck, own, other):
        return {
            "training_rows": {"body_detected_share": share, "body_pck_0.2": pck},
            "pose_control": {"pck_own": own, "pck_other": other},
            "real_rows": {"body_detected_share": 1.0},
            "vae_real_rows": {"body_detected_share": 0.68, "body_pck_0.2": 0.55},
        }

    rows = {
        "chain": {
            "overrides": {},
            "steps": 2500,
            "train_cpu_s": 1800,
            "stage2": stage2(0.32, 0.14, 0.01, 0.04),
        },
        "lr_1e-3": {
            "overrides": {"learning_rate": 1e-3},
            "steps": 2500,
            "train_cpu_s": 1830,
            "stage2": stage2(0.0, None, None, None),
        },
    }
    lines = body_sweep.table(rows).splitlines()
    assert lines[0].startswith("| variant | overrides | steps | body found |")
    assert lines[2] == "| chain | (the chain's) | 2500 | 32% | 0.14 | 0.01 / 0.04 | 30.0 |"
    assert lines[3] == "| lr_1e-3 | learning_rate=0.001 | 2500 | 0% | – | – | 30.5 |"
    assert "through the VAE 68%, PCK 0.55" in lines[-1]
