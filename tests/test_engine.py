"""The engine on a small synthetic flow: parts, resume, staleness, retries, per-item errors.

The stages here are deliberately tiny so each test checks one engine behaviour; the real
stages run end to end in test_build_e2e.py.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import schemas
from pipeline.config import ConfigError, load_config
from pipeline.executor import Pipeline
from pipeline.manifest import DONE, FAILED, STALE, load_manifest
from pipeline.stage import Rejected, Resources, Stage, StageConfig

NUMBERS = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("n", pa.int64())])


class SourceConfig(StageConfig):
    count: int = 10


class NumberSource(Stage):
    """Source: items 0..count-1; item 7 is a hostile id that raises."""
    name = "numbers"
    Config = SourceConfig
    output_schema = NUMBERS
    resources = Resources(num_cpus=0.5, batch_size=4)

    def plan(self):
        return [{"key": f"k{i:03d}", "n": i} for i in range(self.config.count)]

    key_field = "key"

    def process(self, item):
        if item["n"] == 7:
            raise ValueError("unsafe id for item 7")
        yield dict(item)


class SquareConfig(StageConfig):
    max_n: int = 100
    setup_log: str = ""
    fail_part: int = -1           # this part raises as a whole (every attempt)
    bad_schema_n: int = -1        # this item returns a row that does not fit the schema


class Square(Stage):
    name = "square"
    Config = SquareConfig
    input_schema = NUMBERS
    output_schema = NUMBERS
    resources = Resources(num_cpus=0.5, batch_size=4)

    def setup(self):
        if self.config.setup_log:
            with open(self.config.setup_log, "a") as f:
                f.write(f"{os.getpid()}\n")

    key_field = "key"

    def process_batch(self, rows):
        if self.context.part == self.config.fail_part:
            raise RuntimeError(f"part {self.context.part} is broken")
        return super().process_batch(rows)

    def process(self, row):
        if row["n"] == self.config.bad_schema_n:
            yield {"key": row["key"], "n": "not a number"}
        elif row["n"] * row["n"] > self.config.max_n:
            yield Rejected(row, "too_big", f"{row['n']}^2 > {self.config.max_n}")
        else:
            yield {"key": row["key"], "n": row["n"] * row["n"]}


STAGES = [NumberSource, Square]


@pytest.fixture(autouse=True, scope="module")
def _ray(services):
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    yield
    from pipeline.executor import shutdown_ray
    shutdown_ray()


def make(tmp_path: Path, **stages) -> Pipeline:
    cfg = {"corpus": "toy", "flow": "toy", "root": str(tmp_path / "root"), "part_size": 4,
           "ray": {"part_retries": 1}, "stages": stages}
    path = tmp_path / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Pipeline(load_config(path), STAGES)


def test_parts_outputs_rejected_errors_and_manifest(tmp_path):
    pipe = make(tmp_path, square={"max_n": 40})
    r1 = pipe.run_stage("numbers", progress=False)
    r2 = pipe.run_stage("square", progress=False)
    assert sorted(r1.ran) == [0, 1, 2] and sorted(r2.ran) == [0, 1, 2]  # 10 items in parts of 4
    st = pipe.storage
    kept = pa.concat_tables([st.read_table(f"toy/square/part-{k:05d}.parquet") for k in range(3)])
    assert sorted(kept["n"].to_pylist()) == [0, 1, 4, 9, 16, 25, 36]
    rej = st.read_table("toy/square/_rejected/part-00002.parquet").to_pylist()
    assert {r["key"]: r["reason"] for r in rej} == {"k008": "too_big", "k009": "too_big"}
    assert rej[0]["detail"] == "8^2 > 40"
    err = st.read_table("toy/numbers/_errors/part-00001.parquet").to_pylist()
    assert err == [{"stage": "numbers", "part": 1, "item_key": "k007", "error_type": "ValueError",
                    "message": "unsafe id for item 7"}]
    meta = pq.read_schema(st.full("toy/square/part-00000.parquet")).metadata
    assert meta[b"livecc.schema_version"] == schemas.SCHEMA_VERSION.encode()
    m = load_manifest(st, "toy/square", "square")
    assert m.entry(2).counts == {"input": 2, "kept": 0, "rejected": 2, "errors": 0}
    assert m.entry(2).reasons == {"too_big": 2}
    assert all(s == DONE for s in pipe.part_states(1).values())


def test_resume_skips_done_parts_and_force_redoes(tmp_path):
    log = tmp_path / "setups.txt"
    pipe = make(tmp_path, square={"setup_log": str(log), "resources": {"num_cpus": 0.5, "concurrency": 1}})
    pipe.run_stage("numbers", progress=False)
    assert sorted(pipe.run_stage("square", progress=False).ran) == [0, 1, 2]
    # one actor ran all three parts: setup() ran once per actor, not once per part
    assert len(log.read_text().split()) == 1
    again = pipe.run_stage("square", progress=False)
    assert again.ran == [] and again.skipped == 3 and not again.did_work
    assert pipe.up_to_date()
    forced = pipe.run_stage("square", force=True, progress=False)
    assert sorted(forced.ran) == [0, 1, 2]
    chosen = pipe.run_stage("square", parts=[1], progress=False)
    assert chosen.ran == [1]


def test_changed_config_marks_stage_and_downstream_stale(tmp_path):
    pipe = make(tmp_path)
    pipe.run_stage("numbers", progress=False)
    pipe.run_stage("square", progress=False)
    changed = make(tmp_path, numbers={"count": 10}, square={"max_n": 5})
    assert set(changed.part_states(0).values()) == {DONE}          # count=10 is the default: same hash
    assert set(changed.part_states(1).values()) == {STALE}
    upstream_changed = make(tmp_path, numbers={"count": 9})
    assert set(upstream_changed.part_states(0).values()) == {STALE}  # a new plan over old entries
    assert upstream_changed.part_states(1) == {}                       # nothing upstream is done yet
    # a re-run of the upstream part with identical output keeps downstream done
    pipe.run_stage("numbers", parts=[0], progress=False)
    assert set(pipe.part_states(1).values()) == {DONE}


def test_failing_part_is_retried_then_failed_while_others_finish(tmp_path):
    pipe = make(tmp_path, square={"fail_part": 1})
    pipe.run_stage("numbers", progress=False)
    run = pipe.run_stage("square", progress=False)
    assert sorted(run.ran) == [0, 2]
    assert list(run.failed) == [1] and "part 1 is broken" in run.failed[1]
    m = load_manifest(pipe.storage, "toy/square", "square")
    assert m.entry(1).status == FAILED and m.entry(1).attempts == 2   # 1 retry configured
    assert pipe.part_states(1)[1] == FAILED
    assert not pipe.up_to_date()


def test_row_that_breaks_the_schema_becomes_an_error_row(tmp_path):
    pipe = make(tmp_path, square={"bad_schema_n": 2})
    pipe.run_stage("numbers", progress=False)
    pipe.run_stage("square", progress=False)
    err = pipe.storage.read_table("toy/square/_errors/part-00000.parquet").to_pylist()
    assert len(err) == 1 and err[0]["item_key"] == "k002" and err[0]["error_type"] == "SchemaError"
    assert "'n'" in err[0]["message"]
    kept = pipe.storage.read_table("toy/square/part-00000.parquet")["key"].to_pylist()
    assert kept == ["k000", "k001", "k003"]


def test_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("corpus: x\nroot: r\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: bogus: Extra inputs are not permitted"):
        load_config(path)
    path.write_text("corpus: x\nroot: r\npart_size: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: part_size: .*integer"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"stages.square.max_n: .*integer"):
        make(tmp_path, square={"max_n": "lots"})
    with pytest.raises(ConfigError, match=r"stages.sqaure: no such stage"):
        make(tmp_path, sqaure={})
    cfg = load_config(tmp_path / "build.yaml", ["stages.square.max_n=3", "part_size=2"])
    assert cfg.stages["square"]["max_n"] == 3 and cfg.part_size == 2
    assert cfg.root == str(tmp_path / "root")  # resolved against the config file's folder


def test_schema_validation_names_field():
    with pytest.raises(schemas.SchemaError, match=r"field 'start' \(row 1\)") as ei:
        schemas.validate_rows([{"clip_id": "a", "video_id": "v", "start": 0.0, "end": 1.0},
                               {"clip_id": "b", "video_id": "v", "start": "soon", "end": 1.0}], schemas.CLIPS)
    assert ei.value.field == "start" and ei.value.row == 1
    with pytest.raises(schemas.SchemaError, match="non-nullable"):
        schemas.validate_rows([{"clip_id": None, "video_id": "v", "start": 0.0, "end": 1.0}], schemas.CLIPS)
    with pytest.raises(schemas.SchemaError, match="unknown field"):
        schemas.validate_rows([{"clip_id": "a", "video_id": "v", "start": 0.0, "end": 1.0, "bogus": 1}], schemas.CLIPS)


class Halve(Square):
    """Same work as Square, but actors of another resource shape (0.25 CPU, concurrency 8)."""
    name = "halve"
    resources = Resources(num_cpus=0.25, batch_size=4, concurrency=8)


def test_stages_with_different_resource_shapes_do_not_starve_each_other(tmp_path):
    # Square's 0.5-CPU actors fill the 2-CPU cluster; Halve's actors need the CPUs they hold
    cfg_path = tmp_path / "b.yaml"
    cfg_path.write_text(yaml.safe_dump({"corpus": "toy", "flow": "toy", "root": str(tmp_path / "root"),
                                        "part_size": 1, "stages": {}}))
    pipe = Pipeline(load_config(cfg_path), [NumberSource, Square, Halve])
    for name in ("numbers", "square", "halve"):
        run = pipe.run_stage(name, progress=False)
        assert len(run.ran) == 10 and not run.failed, name


def test_a_stage_switched_off_is_left_out_of_the_chain(tmp_path):
    pipe = make(tmp_path, square={"enabled": False})
    assert [s.name for s in pipe.stages] == ["numbers"] and [s.name for s in pipe.all_stages] == ["numbers", "square"]
    # switching a stage on or off is not a change of its output: the hash does not move
    assert make(tmp_path, square={"enabled": True}).hashes == make(tmp_path).hashes
    with pytest.raises(ConfigError, match="stages.numbers.enabled: the source stage cannot be switched off"):
        make(tmp_path, numbers={"enabled": False})
