"""``shardwise status`` from the checkpoint store, and the IAM policy a config needs."""

from __future__ import annotations

import fnmatch
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shardwise.cli.iam import iam_policy
from shardwise.cli.status import format_status, status_report
from shardwise.cli.table import format_age
from shardwise.config import Settings, parse_config
from shardwise.errors import StoreSchemaError
from shardwise.leases import LeaseCoordinator
from shardwise.leases.admin import LeaseView, ShardLease, WorkerBeat
from shardwise.leases.table import LeaseTable
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
    owner: str | None = None,
    counter: int = 0,
    held: timedelta = timedelta(minutes=5, seconds=2),
    handoff_to: str | None = None,
    stream_arn: str = ARN,
) -> ShardLease:
    row = ShardCheckpoint(
        processor=processor,
        stream_arn=stream_arn,
        shard_id=ShardId(shard),
        parent_shard_id=None if parent is None else ShardId(parent),
        sequence_number=None if sequence is None else SequenceNumber(sequence),
        start_position=StartingPosition.TRIM_HORIZON,
        finished=finished,
        updated_at=T0 - age,
    )
    since = None if owner is None else T0 - held
    return ShardLease(row, owner=owner, counter=counter, owner_since=since, handoff_to=handoff_to)


def beat(worker: str, age: timedelta, *, processor: str = "orders") -> WorkerBeat:
    return WorkerBeat(processor, ARN, worker, heartbeat=7, started_at=T0 - age, updated_at=T0 - age)


class TestFormatStatus:
    """The status text: a summary per processor, one row per shard, one line per worker."""

    def test_processors_shards_and_workers(self) -> None:
        """Configured processors in order, then ones only the store knows; ages are relative;
        a worker is stale? past three lease durations, or when it has no heartbeat row."""
        settings = config(
            processor("orders", "{table: Orders}")
            + processor("paused", "{table: Orders}", "    enabled: false\n"),
            top="store: {url: 'postgresql+asyncpg://shardwise:s3cret@db/shardwise'}\n"
            "worker: {lease_duration_seconds: 10}",
        )
        shards = [
            checkpoint(
                "shard-1", "500", finished=True, counter=9, age=timedelta(hours=3, minutes=12)
            ),
            checkpoint("shard-2", None, parent="shard-1", owner="w1", counter=12),
            checkpoint("shard-3", "77", owner="w1", counter=4, handoff_to="w2", held=timedelta(0)),
            checkpoint("shard-4", "80", counter=31, handoff_to="w2"),
            checkpoint("shard-5", "81", owner="gone", counter=3),
            checkpoint("shard-9", "7", processor="renamed", age=timedelta(days=2, hours=4)),
        ]
        workers = [
            beat("w1", timedelta(seconds=3)),
            beat("w2", timedelta(seconds=30)),  # exactly three durations: not stale yet
            beat("w3", timedelta(seconds=31)),
        ]
        text = format_status(settings, LeaseView(shards, workers), now=T0)
        assert text == "\n".join(
            [
                "store: postgresql+asyncpg://shardwise:***@db/shardwise",
                "ages: by this machine's clock (workers' clocks may differ; leases expire by "
                "counter, not by time)",
                "",
                "processor orders: 5 shard(s), 4 reading (3 leased), 1 finished; "
                "last checkpoint write 42s ago",
                f"  stream {ARN}",
                "    SHARD    CHECKPOINT      FINISHED  OWNER     "
                "COUNTER  HELD FOR  UPDATED    PARENT",
                "    shard-1  500             yes       -         9        -         3h12m ago  -",
                "    shard-2  (TRIM_HORIZON)  no        w1        "
                "12       5m02s     42s ago    shard-1",
                "    shard-3  77              no        w1 -> w2  4        0s        42s ago    -",
                "    shard-4  80              no        -> w2     31       -         42s ago    -",
                "    shard-5  81              no        gone      3        5m02s     42s ago    -",
                "    worker gone: 1 lease(s), no heartbeat row "
                "(stale? more than 3 lease durations)",
                "    worker w1: 2 lease(s), heartbeat 3s ago",
                "    worker w2: 0 lease(s), heartbeat 30s ago",
                "    worker w3: 0 lease(s), heartbeat 31s ago (stale? more than 3 lease durations)",
                "",
                "processor paused (disabled): no checkpoints yet",
                "",
                "processor renamed (not in the config: its checkpoints are kept): 1 shard(s), "
                "1 reading (0 leased), 0 finished; last checkpoint write 2d04h ago",
                f"  stream {ARN}",
                "    SHARD    CHECKPOINT  FINISHED  OWNER  COUNTER  HELD FOR  UPDATED    PARENT",
                "    shard-9  7           no        -      0        -         2d04h ago  -",
            ]
        )
        assert "s3cret" not in text

    def test_workers_without_checkpoints(self) -> None:
        """A stream whose workers beat before any shard is registered shows its workers."""
        settings = config(processor("orders", "{table: Orders}"))
        text = format_status(settings, LeaseView([], [beat("w1", timedelta(0))]), now=T0)
        assert text.splitlines()[3:] == [
            "processor orders: no checkpoints yet",
            f"  stream {ARN}",
            "    worker w1: 0 lease(s), heartbeat 0s ago",
        ]

    def test_kinesis_processor(self) -> None:
        """A Kinesis processor is reported like any other, under its stream's ARN; status
        reads only the store, so a stream given by name needs no AWS call."""
        settings = config(kinesis_processor("clicks", "{stream_name: clicks}"))
        lease = checkpoint(
            "shardId-000000000000", "4960", processor="clicks", owner="w1", stream_arn=KINESIS_ARN
        )
        text = format_status(settings, LeaseView([lease], []), now=T0)
        lines = text.splitlines()[3:]
        assert lines[0].startswith("processor clicks: 1 shard(s), 1 reading (1 leased)")
        assert lines[1] == f"  stream {KINESIS_ARN}"
        assert lines[3].split()[:4] == ["shardId-000000000000", "4960", "no", "w1"]
        assert "no checkpoints yet" in format_status(settings, LeaseView([], []), now=T0)

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
            # Checkpoints move only through a lease, as a worker writes them.
            table = LeaseTable(store, processor="orders", stream_arn=ARN, worker_id="w")
            for shard_id in (ShardId("shard-1"), ShardId("shard-2")):
                assert await table.take(shard_id, 0) is not None
            await table.finish(ShardId("shard-1"), 1, SequenceNumber("500"))
            await table.save(ShardId("shard-2"), 1, SequenceNumber("612"))
            await table.release({ShardId("shard-2"): 1}, None)
        settings = config(
            processor("orders", "{table: Orders}"), top=f"store: {{url: '{sqlite_url}'}}"
        )
        text = await status_report(settings, now=datetime.now(UTC) + timedelta(minutes=2))
        assert "processor orders: 2 shard(s), 1 reading (0 leased), 1 finished" in text
        lines = text.splitlines()
        assert any(line.split()[:4] == ["shard-1", "500", "yes", "-"] for line in lines)
        assert any(line.split()[:4] == ["shard-2", "612", "no", "-"] for line in lines)
        assert any(line.split()[-1] == "shard-1" for line in lines if "shard-2" in line)

    async def test_owners_counters_and_workers(self, store_url: str) -> None:
        """Leases taken by real coordinators show their owner, counter and holder's workers."""
        async with await CheckpointStore.connect(store_url) as store:
            await store.register_shards(
                "orders",
                ARN,
                [
                    ShardRegistration(ShardId(f"shard-{n}"), None, StartingPosition.TRIM_HORIZON)
                    for n in range(3)
                ],
            )
            a = LeaseCoordinator(store, processor="orders", stream_arn=ARN, worker_id="a")
            b = LeaseCoordinator(store, processor="orders", stream_arn=ARN, worker_id="b")
            await a.renew_once()
            a_leases = await a.take_once()
            await a.renew_once()  # every counter moves from 1 to 2
            await b.renew_once()  # a heartbeat row, no lease
            settings = config(
                processor("orders", "{table: Orders}"), top=f"store: {{url: '{store_url}'}}"
            )
            text = await status_report(settings, now=datetime.now(UTC) + timedelta(seconds=5))
            await a.release_all()
            await b.release_all()
        assert len(a_leases) == 3
        assert "processor orders: 3 shard(s), 3 reading (3 leased), 0 finished" in text
        rows = [line.split() for line in text.splitlines() if line.strip().startswith("shard-")]
        assert [row[:5] for row in rows] == [
            [f"shard-{n}", "(TRIM_HORIZON)", "no", "a", "2"] for n in range(3)
        ]
        workers = [line for line in text.splitlines() if line.startswith("    worker ")]
        assert [re.sub(r"\d+s ago", "Ns ago", line) for line in workers] == [
            "    worker a: 3 lease(s), heartbeat Ns ago",  # not stale: lease duration 10 s
            "    worker b: 0 lease(s), heartbeat Ns ago",
        ]

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


KINESIS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
KINESIS_READ = [
    "kinesis:DescribeStreamSummary",
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:ListShards",
]


def kinesis_processor(name: str, source: str, extra: str = "") -> str:
    return (
        f"  - name: {name}\n    source: {{kinesis: {source}}}\n    handler: m:h\n"
        f"    starting_position: LATEST\n{extra}"
    )


def decrypt(streams: list[str]) -> dict[str, Any]:
    """kms:Decrypt on any key, only as Kinesis uses it for these streams."""
    context = {"kms:EncryptionContext:aws:kinesis:arn": streams}
    return allow("DecryptKinesisRecords", ["kms:Decrypt"], ["*"], Condition={"StringLike": context})


class TestIamPolicyKinesis:
    """Kinesis sources: read actions on each stream, and kms:Decrypt for its records."""

    def test_stream_name_with_region(self) -> None:
        """A stream by name: its ARN in aws.region, any account; DescribeStreamSummary
        resolves it. No DynamoDB statement for a config without a DynamoDB source."""
        settings = config(
            kinesis_processor("clicks", "{stream_name: clicks}"), top="aws: {region: eu-west-1}"
        )
        stream = "arn:aws:kinesis:eu-west-1:*:stream/clicks"
        assert statements(settings) == [
            allow("ReadKinesisStreams", KINESIS_READ, [stream]),
            decrypt([stream]),
        ]

    def test_stream_name_without_region_and_partitions(self) -> None:
        """No region: any region; China and GovCloud regions get their partitions."""
        [read, _] = statements(config(kinesis_processor("c", "{stream_name: clicks}")))
        assert read["Resource"] == ["arn:aws:kinesis:*:*:stream/clicks"]
        for region, partition in (("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")):
            settings = config(
                kinesis_processor("c", "{stream_name: clicks}"), top=f"aws: {{region: {region}}}"
            )
            assert statements(settings)[0]["Resource"] == [
                f"arn:{partition}:kinesis:{region}:*:stream/clicks"
            ]

    def test_stream_arn_exact_and_merged(self) -> None:
        """A stream ARN is used as it is; two processors on one stream share the resource."""
        settings = config(
            kinesis_processor("a", f"{{stream_arn: '{KINESIS_ARN}'}}")
            + kinesis_processor("b", f"{{stream_arn: '{KINESIS_ARN}'}}")
        )
        assert statements(settings) == [
            allow("ReadKinesisStreams", KINESIS_READ, [KINESIS_ARN]),
            decrypt([KINESIS_ARN]),
        ]

    @pytest.mark.parametrize(
        ("context", "allowed"),
        [
            ("arn:aws:kinesis:us-east-1:123456789012:stream/clicks", True),
            ("arn:aws:kinesis:us-east-1:210987654321:stream/clicks", True),  # any account
            ("arn:aws:kinesis:us-east-1:123456789012:stream/orders", False),
            ("arn:aws:kinesis:us-east-1:123456789012:stream/clicks-archive", False),
            ("arn:aws:kinesis:eu-west-1:123456789012:stream/clicks", False),
        ],
    )
    def test_decrypt_is_limited_to_these_streams(self, context: str, allowed: bool) -> None:
        """Kinesis calls KMS with the stream's ARN as encryption context: the StringLike
        patterns (IAM's * is fnmatch's) admit only the configured streams' ARNs."""
        settings = config(
            kinesis_processor("c", "{stream_name: clicks}"), top="aws: {region: us-east-1}"
        )
        [statement] = [s for s in statements(settings) if s["Action"] == ["kms:Decrypt"]]
        patterns = statement["Condition"]["StringLike"]["kms:EncryptionContext:aws:kinesis:arn"]
        assert any(fnmatch.fnmatchcase(context, pattern) for pattern in patterns) is allowed

    def test_dynamodb_and_kinesis_together(self) -> None:
        """DynamoDB statements stay as they are; Kinesis ones follow; destinations last."""
        queue = "arn:aws:sqs:us-east-1:123456789012:failures"
        settings = config(
            processor("orders", f"{{stream_arn: '{ARN}'}}")
            + kinesis_processor("clicks", f"{{stream_arn: '{KINESIS_ARN}'}}", destination(queue))
        )
        assert statements(settings) == [
            allow("ReadStreams", STREAM_READ, [ARN]),
            LIST_STREAMS,
            allow("ReadKinesisStreams", KINESIS_READ, [KINESIS_ARN]),
            decrypt([KINESIS_ARN]),
            allow("SendFailuresToSqs", ["sqs:SendMessage"], [queue]),
        ]
