"""The pipeline builds as a Dataflow job offline (dry run), with the expected steps."""

import apache_beam as beam

from pipeline.config import resolve_defaults
from pipeline.graph import build_pipeline
from pipeline.options import MaskMineOptions


def test_dataflow_dry_run_builds_the_job():
    options = MaskMineOptions(
        [
            "--runner=DataflowRunner",
            "--dry_run=True",
            "--project=maskmine-test",
            "--region=us-central1",
            "--temp_location=gs://fake-bucket/tmp",
            "--input=gs://fake-bucket/images/**",
            "--output=gs://fake-bucket/out",
            "--checkpoint=gs://fake-bucket/sam_vit_h.pth",
            "--model_type=vit_h",
            "--precision=bf16",
            "--share_model_across_processes",
            "--run_id=dry",
        ]
    )
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    result = pipeline.run()
    job = result.job.proto
    assert job.name
    # Runner v2 jobs carry the portable pipeline; its transform names show the graph.
    names = {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}
    for step in [
        "ReadURIs",
        "Decode",
        "Mine",
        "Mine/RunInference",
        "Quality",
        "Dedup",
        "WriteMasks",
        "WriteImages",
        "WriteErrors",
    ]:
        assert step in names, (step, sorted(n for n in names if "/" not in n))
    assert job.type_.name == "JOB_TYPE_BATCH"


def test_dataflow_dry_run_builds_the_streaming_job():
    options = MaskMineOptions(
        [
            "--runner=DataflowRunner",
            "--dry_run=True",
            "--streaming",
            "--project=maskmine-test",
            "--region=us-central1",
            "--temp_location=gs://fake-bucket/tmp",
            "--input_subscription=projects/maskmine-test/subscriptions/new-images",
            "--input=gs://fake-bucket/incoming/",
            "--output=gs://fake-bucket/out",
            "--checkpoint=gs://fake-bucket/sam_vit_h.pth",
            "--model_type=vit_h",
            "--window_s=300",
            "--run_id=dry",
        ]
    )
    resolve_defaults(options)  # offline: no bucket is asked in a dry run
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    result = pipeline.run()
    names = {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}
    for step in [
        "ReadPubSub/ReadPubSub",
        "ReadPubSub/ParseMessages",
        "WatchInputs",
        "Decode",
        "DedupContent",
        "Window",
        "Mine/RunInference",
        "WriteMasks",
        "WriteImages",
        "WriteErrors",
    ]:
        assert step in names, (step, sorted(n for n in names if "/" not in n))
    assert result.job.proto.type_.name == "JOB_TYPE_STREAMING"
    # The windowed sinks, not WriteToParquet (corrupt files when a bundle spans windows).
    assert not any("WriteToParquet" in n for n in names)
    assert any(n.startswith("WriteMasks/WriteToFiles") for n in names)
