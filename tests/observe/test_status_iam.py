"""``shardwise status`` from the checkpoint store, and the IAM policy a config needs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shardwise.config import Settings, parse_config
from shardwise.errors import StoreSchemaError
from shardwise.observe.iam import iam_policy
from shardwise.observe.status import format_age, format_status, status_report
from shardwise.records import SequenceNumber, ShardId, StartingPosition
from shardwise.store import CheckpointStore, ShardCheckpoint, ShardRegistration

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2026-01-01T00:00:00.000"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def config(processors: str, top: str = "") -> Settings:
    return parse_config(f"{top}\nprocessors:\n{processors}")


def processor(name: str, source: str, extra: str = "") -> str:
    return (
        f"  - name: {name}\n    source: {{dynamodb: {source}}}\n    handler: m:h\n"
        f"    starting_position: LATEST\n{extra}"
    )


def checkpoint(
    shard: str,
    sequence: str | None,
    *,
    processor: str = "orders",
    finished: bool = False,
    parent: str | None = None,
    age: timedelta = timedelta(seconds=42),
) -> ShardCheckpoint:
    return ShardCheckpoint(
        processor=processor,
        stream_arn=ARN,
        shard_id=ShardId(shard),
        parent_shard_id=None if parent is None else ShardId(parent),
        sequence_number=None if sequence is None else SequenceNumber(sequence),
        start_position=StartingPosition.TRIM_HORIZON,
        finished=finished,
        updated_at=T0 - age,
    )


class TestFormatStatus:
    """The status text: a summary per processor, one row per shard."""

    def test_processors_and_shards(self) -> None:
        """Configured processors in order, then ones only the store knows; ages are relative."""
        settings = config(
            processor("orders", "{table: Orders}")
            + processor("paused", "{table: Orders}", "    enabled: false\n"),
            top="store: {url: 'postgresql+asyncpg://shardwise:s3cret@db/shardwise'}",
        )
        rows = [
            checkpoint("shard-1", "500", finished=True, age=timedelta(hours=3, minutes=12)),
            checkpoint("shard-2", None, parent="shard-1", age=timedelta(seconds=42)),
            checkpoint("shard-9", "7", processor="renamed", age=timedelta(days=2, hours=4)),
        ]
        text = format_status(settings, rows, now=T0)
        assert text == "\n".join(
            [
                "store: postgresql+asyncpg://shardwise:***@db/shardwise",
                "",
                "processor orders: 2 shard(s), 1 reading, 1 finished; "
                "last checkpoint write 42s ago",
                f"  stream {ARN}",
                "    SHARD    CHECKPOINT      FINISHED  UPDATED    PARENT",
                "    shard-1  500             yes       3h12m ago  -",
                "    shard-2  (TRIM_HORIZON)  no        42s ago    shard-1",
                "",
                "processor paused (disabled): no checkpoints yet",
                "",
                "processor renamed (not in the config: its checkpoints are kept): 1 shard(s), "
                "1 reading, 0 finished; last checkpoint write 2d04h ago",
                f"  stream {ARN}",
                "    SHARD    CHECKPOINT  FINISHED  UPDATED    PARENT",
                "    shard-9  7           no        2d04h ago  -",
            ]
        )
        assert "s3cret" not in text

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0, "0s"), (59, "59s"), (61, "1m01s"), (3600, "1h00m"), (90_061, "1d01h"), (-5, "0s")],
    )
    def test_format_age(self, seconds: int, text: str) -> None:
        """Durations are short and never negative (clock skew between workers)."""
        assert format_age(timedelta(seconds=seconds)) == text


class TestStatusReport:
    """status_report reads the store named by the config."""

    async def test_reads_the_store(self, sqlite_url: str) -> None:
        """Registered, checkpointed and finished shards all show."""
        async with await CheckpointStore.connect(sqlite_url) as store:
            await store.register_shards(
                "orders",
                ARN,
                [
                    ShardRegistration(ShardId("shard-1"), None, StartingPosition.TRIM_HORIZON),
                    ShardRegistration(
                        ShardId("shard-2"), ShardId("shard-1"), StartingPosition.TRIM_HORIZON
                    ),
                ],
            )
            await store.finish("orders", ARN, ShardId("shard-1"), SequenceNumber("500"))
            await store.save("orders", ARN, ShardId("shard-2"), SequenceNumber("612"))
        settings = config(
            processor("orders", "{table: Orders}"), top=f"store: {{url: '{sqlite_url}'}}"
        )
        text = await status_report(settings, now=datetime.now(UTC) + timedelta(minutes=2))
        assert "processor orders: 2 shard(s), 1 reading, 1 finished" in text
        lines = text.splitlines()
        assert any(line.split()[:3] == ["shard-1", "500", "yes"] for line in lines)
        assert any(line.split()[:3] == ["shard-2", "612", "no"] for line in lines)
        assert any(line.split()[-1] == "shard-1" for line in lines if "shard-2" in line)

    async def test_unmigrated_store_is_an_error(self, sqlite_url: str) -> None:
        """status never creates or migrates a schema."""
        settings = config(
            processor("orders", "{table: Orders}"), top=f"store: {{url: '{sqlite_url}'}}"
        )
        with pytest.raises(StoreSchemaError):
            await status_report(settings)


STREAM_READ = ["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"]
LIST_STREAMS = {
    "Sid": "ListStreams",
    "Effect": "Allow",
    "Action": ["dynamodb:ListStreams"],
    "Resource": ["*"],
}


def statements(settings: Settings) -> list[dict[str, Any]]:
    policy = iam_policy(settings)
    assert policy["Version"] == "2012-10-17"
    result: list[dict[str, Any]] = policy["Statement"]
    return result


def allow(sid: str, actions: list[str], resources: list[str], **extra: Any) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources, **extra}


class TestIamPolicy:
    """Least privilege: exactly the statements each kind of source and destination needs."""

    def test_table_with_region(self) -> None:
        """A table by name: its streams (label unknown) and DescribeTable, any account."""
        settings = config(processor("p", "{table: Orders}"), top="aws: {region: eu-west-1}")
        assert statements(settings) == [
            allow(
                "ReadStreams", STREAM_READ, ["arn:aws:dynamodb:eu-west-1:*:table/Orders/stream/*"]
            ),
            LIST_STREAMS,
            allow(
                "ResolveTableStreams",
                ["dynamodb:DescribeTable"],
                ["arn:aws:dynamodb:eu-west-1:*:table/Orders"],
            ),
        ]

    def test_table_without_region(self) -> None:
        """No region configured: any region."""
        [read, _, describe] = statements(config(processor("p", "{table: Orders}")))
        assert read["Resource"] == ["arn:aws:dynamodb:*:*:table/Orders/stream/*"]
        assert describe["Resource"] == ["arn:aws:dynamodb:*:*:table/Orders"]

    def test_table_arn_and_partition(self) -> None:
        """A table ARN keeps its own partition, region and account; China regions get aws-cn."""
        table_arn = "arn:aws-cn:dynamodb:cn-north-1:123456789012:table/Orders"
        [read, _, describe] = statements(config(processor("p", f"{{table: '{table_arn}'}}")))
        assert read["Resource"] == [f"{table_arn}/stream/*"]
        assert describe["Resource"] == [table_arn]
        by_name = config(processor("p", "{table: Orders}"), top="aws: {region: cn-north-1}")
        assert statements(by_name)[0]["Resource"] == [
            "arn:aws-cn:dynamodb:cn-north-1:*:table/Orders/stream/*"
        ]

    def test_stream_arn(self) -> None:
        """A stream ARN is exact and needs no DescribeTable; duplicates are merged."""
        settings = config(
            processor("a", f"{{stream_arn: '{ARN}'}}") + processor("b", f"{{stream_arn: '{ARN}'}}")
        )
        assert statements(settings) == [allow("ReadStreams", STREAM_READ, [ARN]), LIST_STREAMS]

    def test_sqs_and_sns_destinations(self) -> None:
        """Queues get SendMessage, topics Publish, each on its own ARN only."""
        queue = "arn:aws:sqs:us-east-1:123456789012:failures"
        topic = "arn:aws:sns:us-east-1:123456789012:failures"
        settings = config(
            processor("q", f"{{stream_arn: '{ARN}'}}", destination(queue))
            + processor("t", f"{{stream_arn: '{ARN}'}}", destination(topic))
        )
        assert statements(settings)[2:] == [
            allow("SendFailuresToSqs", ["sqs:SendMessage"], [queue]),
            allow("PublishFailuresToSns", ["sns:Publish"], [topic]),
        ]

    def test_s3_destinations(self) -> None:
        """S3: write and read under the prefix, list the bucket limited to the prefix."""
        settings = config(
            processor("a", f"{{stream_arn: '{ARN}'}}", destination("s3://failures-bucket/orders/"))
            + processor("b", f"{{stream_arn: '{ARN}'}}", destination("arn:aws:s3:::whole-bucket")),
        )
        objects = ["arn:aws:s3:::failures-bucket/orders/*", "arn:aws:s3:::whole-bucket/*"]
        assert statements(settings)[2:] == [
            allow("WriteFailuresToS3", ["s3:PutObject"], objects),
            allow("ReadFailuresFromS3", ["s3:GetObject"], objects),
            allow(
                "ListFailuresBucket",
                ["s3:ListBucket"],
                ["arn:aws:s3:::failures-bucket"],
                Condition={"StringLike": {"s3:prefix": ["orders/*"]}},
            ),
            allow("ListFailuresBucket2", ["s3:ListBucket"], ["arn:aws:s3:::whole-bucket"]),
        ]

    def test_sql_and_file_destinations_need_nothing(self) -> None:
        """Destinations outside AWS add no statement."""
        settings = config(
            processor("a", f"{{stream_arn: '{ARN}'}}", destination("sql"))
            + processor("b", f"{{stream_arn: '{ARN}'}}", destination("file:///var/lib/f.jsonl"))
        )
        assert statements(settings) == [allow("ReadStreams", STREAM_READ, [ARN]), LIST_STREAMS]


def destination(target: str) -> str:
    return f"    destination_config: {{on_failure: {{destination: '{target}'}}}}\n"
