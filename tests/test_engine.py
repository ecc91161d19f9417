"""The engine on a small synthetic flow: parts, resume, staleness by content, retries, per-item
errors, streaming (stages at the same time), backpressure, fusion, the in-process executor.

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
from pipeline.pipeline import Pipeline
from pipeline.executor import LocalExecutor, RayExecutor
from pipeline.manifest import BLOCKED, DONE, FAILED, PENDING, STALE, load_manifest
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
    die_part: int = -1            # this part kills its actor's process
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
        if self.context.part == self.config.die_part:
            os._exit(1)
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
    assert again.ran == [] and again.skipped == [0, 1, 2] and not again.did_work
    assert pipe.up_to_date()
    forced = pipe.run_stage("square", force=True, progress=False)
    assert sorted(forced.ran) == [0, 1, 2]
    chosen = pipe.run_stage("square", parts=[1], progress=False)
    assert chosen.ran == [1]


def test_changed_config_marks_the_stage_stale_not_its_neighbours(tmp_path):
    pipe = make(tmp_path)
    pipe.run_stage("numbers", progress=False)
    pipe.run_stage("square", progress=False)
    changed = make(tmp_path, numbers={"count": 10}, square={"max_n": 5})
    assert set(changed.part_states(0).values()) == {DONE}          # count=10 is the default: same key
    assert set(changed.part_states(1).values()) == {STALE}
    upstream_changed = make(tmp_path, numbers={"count": 9})
    # status never lists a source: a changed source config has no plan until a build makes one
    assert upstream_changed.part_states(0) == {} and not upstream_changed.status()[0]["planned"]
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
    # downstream of a failed part: blocked, in status and in the next stage's run
    three = Pipeline(pipe.cfg, [NumberSource, Square, Tag])
    assert three.part_states(2) == {0: PENDING, 1: BLOCKED, 2: PENDING}
    run = three.run(["square", "tag"], progress=False)
    assert run.stages["tag"].blocked == [1] and sorted(run.stages["tag"].ran) == [0, 2]


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


class TagConfig(StageConfig):
    sleep_s: float = 0.0


class Tag(Stage):
    """Passes rows through (a downstream stage for staleness, overlap and backpressure tests);
    another resource shape than Square, so the two are not fused."""
    name = "tag"
    Config = TagConfig
    input_schema = NUMBERS
    output_schema = NUMBERS
    resources = Resources(num_cpus=0.25, batch_size=None)
    key_field = "key"

    def process_batch(self, rows):
        import time as _time

        _time.sleep(self.config.sleep_s)
        return [[dict(r)] for r in rows]


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


def make3(tmp_path: Path, part_size: int = 4, ray_cfg: dict | None = None, **stages) -> Pipeline:
    cfg = {"corpus": "toy", "flow": "toy", "root": str(tmp_path / "root"), "part_size": part_size,
           "ray": {"part_retries": 1, **(ray_cfg or {})}, "stages": stages}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "build3.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Pipeline(load_config(path), [NumberSource, Square, Tag])


def part_bytes(pipe: Pipeline) -> dict[str, bytes]:
    root = Path(pipe.storage.root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_a_threshold_change_that_leaves_the_output_unchanged_leaves_downstream_done(tmp_path):
    pipe = make3(tmp_path, square={"max_n": 100})
    first = pipe.run(progress=False)
    assert sorted(first.stages["tag"].ran) == [0, 1, 2]
    changed = make3(tmp_path, square={"max_n": 90})   # 9^2 = 81: the same rows pass
    assert set(changed.part_states(1).values()) == {STALE}
    assert set(changed.part_states(2).values()) == {PENDING}  # waits for its input, not stale
    again = changed.run(progress=False)
    assert sorted(again.stages["square"].ran) == [0, 1, 2]
    assert again.stages["tag"].ran == [] and sorted(again.stages["tag"].skipped) == [0, 1, 2]
    assert changed.up_to_date()


def test_stages_overlap_in_time_and_the_timeline_shows_it(tmp_path):
    pipe = make3(tmp_path, part_size=1, square={"resources": {"num_cpus": 0.5, "batch_size": 1}},
                 tag={"sleep_s": 0.4})
    run = pipe.run(progress=False)
    assert len(run.stages["tag"].ran) == 10
    sq = [(t["start"], t["end"]) for t in run.timeline if t["stage"] == "square"]
    tag = [(t["start"], t["end"]) for t in run.timeline if t["stage"] == "tag"]
    # no barrier: tag starts its first part before square finished its last one
    assert min(a for a, _ in tag) < max(b for _, b in sq)
    from pipeline.report import timeline_report
    report = timeline_report(pipe, run)
    assert (Path(pipe.storage.root) / "toy" / "_build" / "timeline.png").stat().st_size > 1000
    assert [r["stage"] for r in report["stages"]] == ["numbers", "square", "tag"]
    assert all(r["busy_s"] > 0 and r["idle_s"] >= 0 for r in report["stages"])


def test_backpressure_bounds_the_parts_waiting_for_a_slow_stage(tmp_path):
    pipe = make3(tmp_path, part_size=1, tag={"sleep_s": 0.5, "resources": {"num_cpus": 0.25, "batch_size": None,
                                                                           "concurrency": 1, "max_parts_waiting": 2}})
    run = pipe.run(progress=False)
    assert len(run.stages["tag"].ran) == 10
    sq_end = {t["part"]: t["end"] for t in run.timeline if t["stage"] == "square"}
    tag_start = {t["part"]: t["start"] for t in run.timeline if t["stage"] == "tag"}
    # at any moment, the parts square has finished that tag has not started stay within the bound
    # (+1: the worker's start is a little after the scheduler took the part off the queue)
    for t in sorted(sq_end.values()):
        waiting = sum(1 for k in sq_end if sq_end[k] <= t < tag_start[k])
        assert waiting <= 2 + 1, (t, waiting)


def test_fused_and_unfused_builds_are_byte_identical_and_local_needs_no_ray(tmp_path):
    fused = make3(tmp_path / "fused", square={"resources": {"num_cpus": 0.25, "batch_size": 4}})
    fused_run = fused.run(progress=False)
    assert not fused_run.failed
    plain = make3(tmp_path / "plain", ray_cfg={"fuse": False})
    plain.run(progress=False)
    local = make3(tmp_path / "local", ray_cfg={"executor": "local"})
    local.run(progress=False)
    assert part_bytes(fused) == part_bytes(plain) == part_bytes(local)


def test_a_dead_actor_is_replaced_in_its_pool_for_the_next_stage(tmp_path):
    """Regression: a dead actor used to stay in a copy of the pool, and the next stage of the same
    shape started on it (ActorDiedError on a good part with part_retries 0)."""
    pipe = make3(tmp_path, ray_cfg={"part_retries": 0, "fuse": False},
                 square={"die_part": 1, "resources": {"num_cpus": 0.25, "batch_size": 4}})
    ex = RayExecutor(pipe.cfg)
    try:
        pipe.run(["numbers"], executor=ex, progress=False)
        first = pipe.run(["square"], executor=ex, progress=False)
        assert list(first.stages["square"].failed) == [1] and "Actor" in first.stages["square"].failed[1]
        second = pipe.run(["tag"], executor=ex, progress=False)   # same shape as square
        assert sorted(second.stages["tag"].ran) == [0, 2] and not second.stages["tag"].failed
        assert second.stages["tag"].blocked == [1]
    finally:
        ex.close()


def test_local_executor_runs_a_build_in_process(tmp_path):
    pipe = make3(tmp_path, ray_cfg={"executor": "local"})
    ex = LocalExecutor(pipe.cfg)
    run = pipe.run(executor=ex, progress=False)
    assert sorted(run.stages["tag"].ran) == [0, 1, 2] and pipe.up_to_date()


def test_a_stage_switched_off_is_left_out_of_the_chain(tmp_path):
    pipe = make(tmp_path, square={"enabled": False})
    assert [s.name for s in pipe.stages] == ["numbers"] and [s.name for s in pipe.all_stages] == ["numbers", "square"]
    # switching a stage on or off is not a change of its output: the hash does not move
    assert make(tmp_path, square={"enabled": True}).keys == make(tmp_path).keys
    with pytest.raises(ConfigError, match="stages.numbers.enabled: the source stage cannot be switched off"):
        make(tmp_path, numbers={"enabled": False})


def test_fused_rows_are_exactly_what_the_part_file_reads_back():
    """A fused chain hands the next stage the kept rows without converting again the values a
    stage passed through; everything else must come out as the Arrow round trip gives it."""
    import json

    import pyarrow as pa

    from pipeline.worker import canonical_rows
    from schemas import rows_to_table

    word = pa.struct([pa.field("start", pa.float64(), nullable=False), pa.field("end", pa.float64(), nullable=False),
                      pa.field("text", pa.string(), nullable=False)])
    schema_in = pa.schema([("key", pa.string()), ("words", pa.list_(word)), ("tags", pa.list_(pa.string()))])
    schema_out = pa.schema([("key", pa.string()), ("words", pa.list_(word)), ("tags", pa.list_(pa.string())),
                            ("score", pa.float64()), ("pos", pa.list_(pa.float64()))])
    src = rows_to_table([{"key": "a", "words": [{"start": 0.0, "end": 0.5, "text": "hi"},
                                                 {"start": 0.5, "end": 1.0, "text": "there"}], "tags": ["x"]},
                         {"key": "b", "words": [], "tags": None}], schema_in)
    rows = src.to_pylist()
    kept = [
        {**rows[0], "score": 1, "pos": (1, 2.5)},                  # passed through; an int and a tuple
        {"key": "a2", "words": rows[0]["words"][1:], "tags": list(rows[0]["tags"]), "score": 0.25},  # a slice
        {"key": "b", "words": [{"text": "new", "end": 2, "start": 1.5}], "score": None},  # built, keys reordered
        {**rows[1]},
    ]
    sources = [rows[0], rows[0], rows[1], rows[1]]
    table = rows_to_table(kept, schema_out)
    got = canonical_rows(table, kept, sources, src.schema)
    want = table.to_pylist()
    assert got == want
    assert json.dumps(got) == json.dumps(want)  # key order too
    assert [[type(v) for v in r.values()] for r in got] == [[type(v) for v in r.values()] for r in want]
    assert got[0]["words"] is rows[0]["words"] and got[1]["words"] is kept[1]["words"]  # reused, not converted
    assert canonical_rows(table, kept, sources, None) == want  # input not read from a part file: converted
