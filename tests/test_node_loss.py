"""Node loss: a multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and
two worker nodes); a worker node is killed while a stage's parts run on it. The build completes,
every part is accounted for, and the part files equal those of a clean in-process build.

The scenario runs in a child interpreter: it owns its cluster, apart from the session's Ray head.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SCENARIO = textwrap.dedent('''
    import json, sys, threading, time
    from pathlib import Path

    import pyarrow as pa
    import ray
    import yaml
    from ray.cluster_utils import Cluster

    from pipeline.config import load_config
    from pipeline.executor import LocalExecutor, RayExecutor
    from pipeline.pipeline import Listener, Pipeline
    from pipeline.stage import Resources, Stage, StageConfig

    NUMBERS = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("n", pa.int64())])

    class Numbers(Stage):
        name = "numbers"
        output_schema = NUMBERS
        resources = Resources(num_cpus=1, batch_size=None)
        key_field = "key"
        def plan(self):
            return [{"key": f"k{i:03d}", "n": i} for i in range(12)]
        def process(self, row):
            yield dict(row)

    class SlowConfig(StageConfig):
        sleep_s: float = 0.0
        marks: str = ""   # a file per part started: "<node id> <part>", for the node killer

    class Slow(Stage):
        """One CPU per actor: at most one actor per node."""
        name = "slow"
        Config = SlowConfig
        input_schema = output_schema = NUMBERS
        resources = Resources(num_cpus=1, batch_size=None)
        key_field = "key"
        def process_batch(self, rows):
            if self.config.marks:
                node = ray.get_runtime_context().get_node_id()
                (Path(self.config.marks) / f"{node}-{self.context.part}").write_text(str(time.time()))
            time.sleep(self.config.sleep_s)
            return [[{"key": r["key"], "n": r["n"] * 3}] for r in rows]

    class Tail(Stage):
        name = "tail"
        input_schema = output_schema = NUMBERS
        resources = Resources(num_cpus=0.5, batch_size=None)
        key_field = "key"
        def process(self, row):
            yield {"key": row["key"], "n": row["n"] + 1}

    def pipeline(root, sleep_s, marks=""):
        path = Path(root).with_suffix(".yaml")
        path.write_text(yaml.safe_dump({"corpus": "nl", "flow": "toy", "root": str(root), "part_size": 1,
                                        "ray": {"part_retries": 3, "fuse": False},
                                        "stages": {"slow": {"sleep_s": sleep_s, "marks": marks}}}))
        return Pipeline(load_config(path), [Numbers, Slow, Tail])

    def files(pipe):
        root = Path(pipe.storage.root)
        return {str(p.relative_to(root)): p.read_bytes().hex() for p in sorted(root.rglob("part-*.parquet"))}

    tmp = Path(sys.argv[1])
    clean = pipeline(tmp / "clean", 0.0)
    clean.run(executor=LocalExecutor(clean.cfg), progress=False)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = {n.node_id: n for n in (cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1))}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    marks = tmp / "marks"
    marks.mkdir()

    class KillANode(Listener):
        """Kills the first worker node seen running a slow part, while that part sleeps."""
        def stage_started(self, stage):
            if stage == "slow":
                def kill():
                    deadline = time.time() + 60
                    while time.time() < deadline:
                        for m in marks.iterdir():
                            node = m.name.rsplit("-", 1)[0]
                            if node in workers and time.time() - float(m.read_text() or 0) < 1.0:
                                cluster.remove_node(workers[node], allow_graceful=False)
                                print("KILLED", m.name, flush=True)
                                return
                        time.sleep(0.05)
                threading.Thread(target=kill, daemon=True).start()

    pipe = pipeline(tmp / "lossy", 2.0, str(marks))
    ex = RayExecutor(pipe.cfg)
    try:
        run = pipe.run(executor=ex, progress=False, listener=KillANode())
    finally:
        ex.close()
    attempts = {k: e.attempts for k, e in pipe.manifest("slow").parts.items()}
    print("RESULT", json.dumps({
        "failed": {k: v for k, v in run.failed.items()},
        "ran": {k: sorted(v.ran) for k, v in run.stages.items()},
        "states": {s.name: sorted(set(pipe.part_states(i).values())) for i, s in enumerate(pipe.stages)},
        "attempts": attempts,
        "identical": files(pipe) == files(clean),
        "n_files": len(files(pipe)),
    }), flush=True)
    ray.shutdown()
    cluster.shutdown()
''')


@pytest.mark.xfail(strict=False, reason=(
    "known bug, open: when the killed node was running a part, the build hangs in about one run of "
    "three (the driver keeps polling and starts nothing more); the kill used to miss running parts, "
    "which hid it"))
def test_a_killed_worker_node_loses_no_part(tmp_path):
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PREFECT_API_URL")}
    env["PYTHONPATH"] = str(REPO)
    try:  # a clean run takes about 40 s here
        proc = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True,
                              text=True, timeout=100, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the build did not finish in 100 s after the node loss:\n{(exc.stdout or b'')[-3000:]!r}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "KILLED" in proc.stdout, "the node was never killed"
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))[len("RESULT "):])
    assert result["failed"] == {}
    assert result["ran"]["slow"] == list(range(12)) and result["ran"]["tail"] == list(range(12))
    assert result["states"] == {"numbers": ["done"], "slow": ["done"], "tail": ["done"]}
    assert max(result["attempts"].values()) >= 2, result["attempts"]  # parts on the lost node were redone
    assert result["identical"] and result["n_files"] == 36
