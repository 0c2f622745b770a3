"""Profiles: every setting they name is a setting of its stage, and quick is sized for a CPU."""

import dagster as dg
import pytest

from subterra.profiles import FULL, PROFILES, QUICK
from subterra.routes import ROUTES


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_a_profile_is_valid_run_config_of_the_ladder_job(name):
    from subterra_dagster.definitions import defs

    job = defs.resolve_job_def("ladder_workflow")
    dg.validate_run_config(job, PROFILES[name].run_config())  # raises on an unknown or mistyped setting


@pytest.mark.parametrize("mode", ["incremental", "full"])
def test_subterra_ladder_adds_the_recompile_mode_to_a_profile(mode):
    """`subterra ladder [--full]` runs a profile with the recompile mode of its two stages added,
    the profile's own settings of those stages kept."""
    from subterra_dagster.definitions import defs
    from subterra_dagster.resources import RecompileResource
    from subterra_dagster.cli import _with_recompile

    config = _with_recompile(QUICK.run_config(), RecompileResource(mode=mode).run_config())
    dg.validate_run_config(defs.resolve_job_def("ladder_workflow"), config)
    assert config["ops"]["synthetic_corpus"]["config"] == {**QUICK.corpus, "recompile": mode}
    assert config["ops"]["trained_weights"]["config"] == {**QUICK.training, "recompile": mode}
    assert "recompile" not in config["ops"]["validated_dataset"]["config"]
    assert QUICK.run_config()["ops"]["trained_weights"]["config"] == QUICK.training  # the profile itself untouched


def test_quick_runs_every_route_on_smollm2_at_a_cpu_scale_and_full_at_the_published_one():
    for profile in (QUICK, FULL):
        assert profile.training["base_model"] == "smollm2-135m"
        assert profile.eval["routes"] == list(ROUTES)
    # SmolLM2 trains at ~240 tokens/s on this CPU with the full-logits loss (6.28 s for a step of
    # ~1,520 tokens): the quick profile's training fits in 25 minutes
    assert QUICK.training["max_tokens"] <= 240 * 25 * 60
    assert QUICK.eval["scenarios"] < FULL.eval["scenarios"] == FULL.corpus["holdout_scenarios"] == 200
    assert QUICK.sizes()["repair_rounds"] == 1 and QUICK.sizes()["eval_scenarios_per_generated_set"] == 24
