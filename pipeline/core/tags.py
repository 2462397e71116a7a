"""Names of the tagged outputs every Beam job routes, spelled once.

Stage 1, 2 and 3 DoFns emit their main output untagged and these on the
side; a transform downstream picks them by the same constant, never by a
string typed twice.
"""

TAG_REJECTS = "rejects"  # reject rows (or reject tables in stage 1)
TAG_COUNTS = "counts"  # funnel counts, zhclip.pipeline.core.report shape
TAG_SPILLED_REJECTS = "spilled_rejects"  # stage 1: (bucket, spill file) of reject tables
