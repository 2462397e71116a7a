"""Beam's DataflowRunner translates every stage's graph offline, into a template on gs://.

With ``--template_location`` the runner does everything short of calling the
Dataflow service: it builds the runner-v2 job (portable pipeline proto with
the DoFns pickled), builds the sdist that ``--setup_file`` ships, stages both
with Beam's own GCS client (here the emulator), and writes the job template.
The test reads the staged files back: the template names the staged package,
the sdist holds the stage code, and every DoFn in the staged proto unpickles
in a fresh process whose working folder is not the repository. What is not
covered: the service's own validation of the job and the worker containers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from zhclip.pipeline.core import paths
from zhclip.pipeline.core.config import config_from_dict
from zhclip.pipeline.demo.sample import generate_sample, sample_config
from zhclip.pipeline.shards.downloads import DownloadShard

REPO = Path(__file__).resolve().parents[2]

# Run in a child from another folder: prints the class name of every pickled DoFn.
UNPICKLE = r"""
import sys
from apache_beam.internal import pickler
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
proto = beam_runner_api_pb2.Pipeline.FromString(open(sys.argv[1], "rb").read())
for t in proto.components.transforms.values():
    if t.spec.urn == common_urns.primitives.PAR_DO.urn:
        payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
        if payload.do_fn.payload:  # runner-native steps carry no pickled DoFn
            fn = pickler.loads(payload.do_fn.payload)
            print(type(fn[0] if isinstance(fn, tuple) else fn).__name__)
"""


def dataflow_options(bucket: str, stage: str) -> PipelineOptions:
    return PipelineOptions(
        [
            "--runner",
            "DataflowRunner",
            "--project",
            "zhclip-offline",
            "--region",
            "us-central1",
            "--temp_location",
            f"gs://{bucket}/tmp",
            "--staging_location",
            f"gs://{bucket}/staging/{stage}",
            "--template_location",
            f"gs://{bucket}/templates/{stage}.json",
            "--setup_file",
            str(REPO / "setup.py"),
            "--max_num_workers",
            "4",
        ]
    )


def build_stage(stage: str, p: beam.Pipeline, cfg) -> None:
    out = cfg.output
    if stage == "metadata":
        from zhclip.pipeline.metadata import job

        job.build_pipeline(p, cfg, job.plan_inputs(cfg))
    elif stage == "download":
        from zhclip.pipeline.download import job

        job.build_pipeline(p, cfg, [f"{out}/metadata/00000-0000.parquet"])
    else:
        from zhclip.pipeline.score import job

        shard = DownloadShard(
            "00000-0000", f"{out}/downloads/00000-0000.tar", f"{out}/downloads/00000-0000.parquet"
        )
        job.build_pipeline(p, cfg, [shard], [])


def gs_bytes(location: str) -> bytes:
    """Read a file the template names as storage.googleapis.com/BUCKET/PATH."""
    with paths.open_input("gs://" + location.split("storage.googleapis.com/", 1)[1]) as f:
        return f.read()


@pytest.mark.slow
def test_dataflow_runner_translates_and_stages_every_stage(tmp_path: Path, gcs_bucket: str):
    sample = tmp_path / "sample"
    generate_sample(sample, "http://127.0.0.1:9", n_images=20)
    cfg = config_from_dict(sample_config(sample, f"gs://{gcs_bucket}/out"))
    expected_fns = {
        "metadata": {"Chain", "WriteRejects"},
        "download": {"DownloadShardFn"},
        "score": {"WriteShard"},
    }
    for stage, fns in expected_fns.items():
        p = beam.Pipeline(options=dataflow_options(gcs_bucket, stage))
        build_stage(stage, p, cfg)
        p.run()  # writes the template instead of submitting

        template = json.loads(paths.read_text(f"gs://{gcs_bucket}/templates/{stage}.json"))
        env = template["environment"]
        assert "use_runner_v2" in env["experiments"]
        packages = {pkg["name"]: pkg["location"] for pkg in env["workerPools"][0]["packages"]}
        assert "workflow.tar.gz" in packages, packages
        with tarfile.open(fileobj=BytesIO(gs_bytes(packages["workflow.tar.gz"]))) as sdist:
            names = sdist.getnames()
        assert any(n.endswith("pipeline/metadata/job.py") for n in names)
        assert any(n.endswith("pipeline/score/job.py") for n in names)

        staged = paths.list_files(
            packages["workflow.tar.gz"]
            .rsplit("/", 1)[0]
            .replace("storage.googleapis.com/", "gs://")
        )
        proto = [s for s in staged if s.endswith("pipeline.pb")]
        assert proto, staged
        local = tmp_path / f"{stage}.pb"
        with paths.open_input(proto[0]) as f:
            local.write_bytes(f.read())
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(exist_ok=True)
        loaded = subprocess.run(
            [sys.executable, "-c", UNPICKLE, str(local)],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        assert fns <= set(loaded.stdout.split()), (stage, loaded.stdout)
