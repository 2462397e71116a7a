"""Which Beam runner a zhclip job runs on, chosen in one place for every stage.

With no ``--runner`` flag, Beam (2.77) picks ``SwitchingDirectRunner``, which first
tries Prism: a Go binary it downloads from GitHub at run time, with no timeout.
Offline that download fails and Beam falls back to the FnApiRunner; on a
connected machine the same command would run on Prism instead, which no test
here exercises. So zhclip names the local runner itself: the FnApiRunner, built
the way the direct runner builds it (the pipeline options reach the workers
through its provision info), which honours ``--direct_num_workers`` and
``--direct_running_mode``. Any explicit ``--runner`` (``PrismRunner``,
``DirectRunner``, ``PortableRunner``, ``DataflowRunner``, ...) is passed to Beam
as given.

With ``--environment_type`` (e.g. ``EXTERNAL --environment_config
127.0.0.1:PORT``, a ``worker_pool_main`` pool), the same local runner drives
``--direct_num_workers`` SDK-harness workers in that environment: the DoFns go
to them pickled over the Fn API, as on Dataflow. Beam's own ``PortableRunner
--job_endpoint=embed`` starts one worker per job whatever the flags say (its job
service skips the step that reads the worker count), so this is the offline
way to run several workers at once.

Beam is imported inside the functions: training/ reads the ground floor and must
not pull Beam in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

# The name recorded in the options when zhclip chose the runner itself.
LOCAL_RUNNER = "FnApiRunner"


def pipeline_options(beam_args: list[str] | None) -> PipelineOptions:
    """Beam's options from the flags zhclip did not consume (``--runner`` etc.)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(list(beam_args or []))


def runner_given(options: PipelineOptions) -> bool:
    """True when the user named a runner (``--runner X``), so Beam picks it."""
    from apache_beam.options.pipeline_options import StandardOptions

    return bool(options.view_as(StandardOptions).runner)


def local_runner(options: PipelineOptions) -> beam.runners.PipelineRunner:
    """The FnApiRunner, with the options in its provision info as the direct runner does.

    Workers (``multi_processing`` mode, or an ``--environment_type``'s) read
    their options from there.
    """
    from apache_beam.options.pipeline_options import PortableOptions
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    from apache_beam.transforms import environments

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    )
    portable = options.view_as(PortableOptions)
    environment = (
        environments.Environment.from_options(portable) if portable.environment_type else None
    )
    return fn_runner.FnApiRunner(default_environment=environment, provision_info=info)


def make_pipeline(beam_args: list[str] | None) -> beam.Pipeline:
    """A Pipeline on the runner the flags ask for; the local FnApiRunner when none is named."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions

    options = pipeline_options(beam_args)
    if runner_given(options):
        return beam.Pipeline(options=options)
    options.view_as(StandardOptions).runner = LOCAL_RUNNER
    return beam.Pipeline(runner=local_runner(options), options=options)
