"""What a workflow file, a name or a template can never do: name a path outside the data folder,
evaluate anything, or reach the UI from another machine by default."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from subterra_dagster.assets.workflow_graph import workflow_graph
from subterra.phrasing import fill
from subterra.settings import Settings
from subterra.workflow import ID

ROOT = Path(__file__).parent.parent
HOSTILE = ["../outside", "../../etc/passwd", "/etc/passwd", "a/b", "", ".", "..", "Mini", "mini\n", "mini booking",
           "x" * 65, "mini\x00", "~root", "mini_booking/../../x"]


@pytest.mark.parametrize("name", HOSTILE)
def test_a_name_that_is_not_a_workflow_id_names_no_file(name, tmp_path):
    paths = Settings(tmp_path / "data")
    for build in (paths.workflow_file, lambda n: paths.model_dir(n, "0123abcd"), lambda n: paths.run_dir(n, "0123abcd")):
        with pytest.raises(ValueError, match="is not a workflow id"):
            build(name)
    with pytest.raises(ValueError, match="is not a content hash"):
        paths.model_dir("mini_booking", "../..")


def test_a_model_folder_is_a_content_hash_with_its_training_and_repair_round_and_nothing_else(tmp_path):
    paths = Settings(tmp_path / "data")
    for good in ("0123abcd", "0123abcd-repair2", "0123abcd-89abcdef", "0123abcd-89abcdef-repair12"):
        assert paths.model_dir("mini_booking", good) == paths.models_dir / "mini_booking" / good
    for bad in ("0123abcd-repair", "0123abcd-repair0", "0123abcd-repair1/../..", "-repair1", "0123abcd-repairs1",
                "0123abcd-89abcde", "0123abcd-89abcdef0", "0123abcd-89ABCDEF", "0123abcd-repair1-89abcdef",
                "0123abcd--repair1", "0123abcd-89abcdef/.."):
        with pytest.raises(ValueError, match="is not a content hash"):
            paths.model_dir("mini_booking", bad)


@hsettings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=20))
def test_no_name_or_hash_makes_a_path_outside_the_data_folder(name, short_hash):
    root = Path("/srv/subterra/data")
    paths = Settings(root)
    for build in (lambda: paths.workflow_file(name), lambda: paths.model_dir(name, short_hash), lambda: paths.run_dir(name, short_hash)):
        try:
            path = build()
        except ValueError:
            continue
        assert ID.fullmatch(name) and Path(*path.parts).resolve().is_relative_to(root)


def test_a_partition_key_cannot_read_a_file_outside_the_workflows_folder(settings, store, resources, instance):
    """A dynamic partition is added by whoever uses the UI or the API; its key is not trusted."""
    outside = settings.data_dir.parent / "outside.yaml"  # valid, and its id matches its stem
    outside.write_text(settings.workflow_file("mini_booking").read_text().replace("workflow: mini_booking", "workflow: outside"))
    instance.add_dynamic_partitions("workflows", ["../../outside"])
    result = dg.materialize([workflow_graph], partition_key="../../outside", resources=resources, instance=instance,
                            raise_on_error=False)
    assert not result.success
    assert store.tables() == []


def test_templates_fill_slots_by_plain_lookup_and_evaluate_nothing():
    values = {"city": "Oslo", "n": "3"}
    hostile = "{city.__class__} {city.__class__.__mro__} {city!r} {city[0]} {0} {} {city:>99} {__import__} {{city}}"
    assert fill(hostile, values) == hostile.replace("{{city}}", "{city}")  # no plain {slot} in it: left as written
    assert fill("To {city}, {n} of us.", values) == "To Oslo, 3 of us."
    assert fill("{a} {b}", {"a": "{b}", "b": "B"}) == "{b} B"  # a value is never expanded again
    assert fill("{missing}", values) == "{missing}"


FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "execfile"}


def python_sources() -> list[Path]:
    return sorted(p for folder in ("subterra", "subterra_dagster") for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_evaluates_text_or_formats_a_template_it_did_not_write(path):
    """No eval/exec/compile/__import__, and ``str.format``/``format_map`` only on a literal written
    in the code (a template from a workflow file could reach attributes: ``{x.__class__}``)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, f"{path}:{node.lineno}: {node.func.id}()"
        if isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "format_map"):
            assert isinstance(node.func.value, ast.Constant), f"{path}:{node.lineno}: .{node.func.attr}() on a non-literal"


def test_the_ui_binds_to_localhost_by_default():
    command = subprocess.run(["make", "-n", "ui"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    [serve] = [line for line in command.splitlines() if "dagster dev" in line]
    assert "-h 127.0.0.1" in serve and "0.0.0.0" not in serve
    readme = (ROOT / "README.md").read_text()
    assert "make ui" in readme
    for line in readme.splitlines():
        if "dagster dev" in line or "dagster-webserver" in line:
            assert "-h 127.0.0.1" in line, line
