"""Stage 1's outputs: URL shards, rejects files and the report, each written by one step.

Every file is written under a name that depends only on its bucket and part,
and atomically, so a retried bundle rewrites the same bytes under the same name.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from zhclip.pipeline.core import paths
from zhclip.pipeline.core import report as R
from zhclip.pipeline.core import schema as S
from zhclip.pipeline.core.spill import read_groups

METADATA_DIR = "metadata"
REJECTS_DIR = "rejects"
REPORT_DIR = "report"


class WriteUrlShards(beam.DoFn):
    """Write one bucket's kept rows as URL shards of N rows (the last one fewer).

    A bucket arrives as hash groups, each sorted by key; rows left over from
    one group open the next shard, so shard sizes do not depend on the group
    count. File names depend only on the bucket and the part number, and the
    rows on the input, so a retried bundle rewrites the same bytes under the
    same names.
    """

    def __init__(self, out: str, rows_per_shard: int):
        self._out = out
        self._n = rows_per_shard

    def start_bundle(self) -> None:
        self._open: dict[
            int, tuple[int, pa.Table | None]
        ] = {}  # bucket -> (next part, leftover rows)

    def process(self, element: tuple[int, pa.Table, bool]):
        bucket, table, last = element
        part, leftover = self._open.pop(bucket, (0, None))
        if leftover is not None:
            table = pa.concat_tables([leftover, table])
        start = 0
        while table.num_rows - start >= self._n or (last and start < table.num_rows):
            self._write(bucket, part, table.slice(start, self._n))
            part, start = part + 1, start + self._n
        if not last:
            self._open[bucket] = (part, table.slice(start).combine_chunks())
        Metrics.counter("zhclip.metadata", "kept").inc(element[1].num_rows)
        for item in pc.value_counts(element[1].column(S.SOURCE)).to_pylist():
            yield R.counts(item["values"], kept=item["counts"])

    def _write(self, bucket: int, part: int, chunk: pa.Table) -> None:
        name = f"{bucket:05d}-{part:04d}.parquet"
        paths.write_parquet_atomic(
            S.url_shard_table(chunk), paths.join(self._out, METADATA_DIR, name)
        )


class WriteRejects(beam.DoFn):
    """One bucket of reject tables -> rejects/metadata-{bucket}.parquet.

    Written group by group (row groups of one file, each sorted by key and
    reason), so a bucket of rejects never has to fit in memory at once.
    """

    def __init__(self, out: str, n_buckets: int, group_rows: int):
        self._out = out
        self._n, self._group_rows = n_buckets, group_rows

    def process(self, element: tuple[int, list[str]]):
        bucket, part_paths = element
        counts: list[R.Counts] = []

        def sorted_groups():
            for group in read_groups(part_paths, self._n, self._group_rows):
                grouped = group.group_by([S.SOURCE, S.REASON]).aggregate([([], "count_all")])
                counts.extend(
                    R.counts(row[S.SOURCE] or "?", reasons={row[S.REASON]: row["count_all"]})
                    for row in grouped.to_pylist()
                )
                Metrics.counter("zhclip.metadata", "rejected").inc(group.num_rows)
                yield group.sort_by([(S.KEY, "ascending"), (S.REASON, "ascending")])

        paths.write_parquet_atomic(
            sorted_groups(),
            paths.join(self._out, REJECTS_DIR, f"metadata-{bucket:05d}.parquet"),
            schema=S.REJECT_SCHEMA,
        )
        yield from counts


class MergeCounts(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, acc, item):
        return R.merge_counts([acc, item])

    def merge_accumulators(self, accs):
        return R.merge_counts(accs)

    def extract_output(self, acc):
        return acc


# --------------------------------------------------------- composite transforms
class WriteRejectShards(beam.PTransform):
    """(bucket, part file) pairs of rejects -> one sorted rejects file per bucket."""

    def __init__(self, out: str, n_buckets: int, group_rows: int):
        super().__init__()
        self._write = WriteRejects(out, n_buckets, group_rows)

    def expand(self, spilled):
        return spilled | "GroupRejects" >> beam.GroupByKey() | "Write" >> beam.ParDo(self._write)


class WriteReport(beam.PTransform):
    def __init__(self, out: str, extra: dict[str, Any]):
        super().__init__()
        self._out, self._extra = out, extra

    def expand(self, counts):
        out, extra = self._out, self._extra

        def write(merged: R.Counts) -> dict[str, Any]:
            report = R.finalize("metadata", merged, extra)
            report["shards"] = len(paths.list_files(paths.join(out, METADATA_DIR), ".parquet"))
            paths.write_bytes_atomic(
                paths.join(out, REPORT_DIR, "metadata.json"), R.to_json(report)
            )
            return report

        return (
            counts | "Merge" >> beam.CombineGlobally(MergeCounts()) | "WriteJson" >> beam.Map(write)
        )
