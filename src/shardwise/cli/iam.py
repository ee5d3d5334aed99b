"""``shardwise iam-policy``: the least-privilege IAM policy a config needs (a JSON-ready dict).

* Reading streams: ``dynamodb:DescribeStream``, ``GetShardIterator`` and ``GetRecords`` on
  each stream. A ``stream_arn:`` source names its stream exactly; a ``table:`` source reads
  whichever stream the table has now (``LatestStreamArn``), whose label is not known in
  advance, so it gets ``.../table/<T>/stream/*`` plus ``dynamodb:DescribeTable`` on the table
  to resolve it. A table given by name takes the region from ``aws.region`` (``*`` when not
  set) and any account (``*``).
* ``dynamodb:ListStreams`` on ``*``: it supports no resource-level permissions. These
  DynamoDB statements appear only when some processor reads a DynamoDB stream.
* Kinesis data streams: ``kinesis:DescribeStreamSummary`` (a ``stream_name:`` source's ARN),
  ``ListShards``, ``GetShardIterator`` and ``GetRecords`` on each stream, a ``stream_arn:``
  exactly, a ``stream_name:`` as ``arn:<partition>:kinesis:<aws.region or *>:*:stream/<name>``.
  And ``kms:Decrypt`` for a stream encrypted with a customer managed KMS key (the
  ``aws/kinesis`` AWS managed key needs no permission): the key is not in the config, so the
  statement names any key (``*``) but only for the Kinesis encryption context of these
  streams, ``kms:EncryptionContext:aws:kinesis:arn``, which Kinesis sets to the stream's ARN
  in every KMS call it makes. The key's own policy must still let the role use it.
* On-failure destinations, only those configured: ``sqs:SendMessage`` on queues,
  ``sns:Publish`` on topics, and for S3 ``s3:PutObject`` under the prefix plus
  ``s3:GetObject`` / ``s3:ListBucket`` (limited to the prefix) for ``shardwise failures``.
  ``sql`` and ``file://`` destinations need nothing from AWS. An SQS queue or SNS topic
  encrypted with a customer managed KMS key also needs ``kms:GenerateDataKey`` and
  ``kms:Decrypt`` on that key, which the config does not name: add them yourself.

Every processor in the config counts, disabled ones too: a paused mapping keeps its role.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterable
from typing import Any, Final

from shardwise.cli.exit_codes import EXIT_OK
from shardwise.config import DynamoDBSourceConfig, Settings, add_config_argument, load_config
from shardwise.config.processor import KinesisSourceConfig

__all__ = ["add_iam_policy_command", "iam_policy"]

STREAM_READ_ACTIONS: Final = (
    "dynamodb:DescribeStream",
    "dynamodb:GetRecords",
    "dynamodb:GetShardIterator",
)
KINESIS_READ_ACTIONS: Final = (
    "kinesis:DescribeStreamSummary",
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:ListShards",
)
# Kinesis calls KMS with the stream's ARN as this encryption context key (AWS: "Kinesis Data
# Streams encryption context"); conditioning kms:Decrypt on it confines an unnamed key to
# reads of these streams through Kinesis.
KINESIS_ENCRYPTION_CONTEXT: Final = "kms:EncryptionContext:aws:kinesis:arn"
_TABLE_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):dynamodb:[a-z0-9-]+:\d{12}:table/[^/]+")
_S3_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):s3:::(?P<bucket>[^/]+)")
_S3_URL = re.compile(r"s3://(?P<bucket>[^/]+)(?:/(?P<prefix>.*))?")


def add_iam_policy_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register ``shardwise iam-policy -c CONFIG``: the policy, as indented JSON."""
    iam = subparsers.add_parser(
        "iam-policy", help="print the least-privilege IAM policy a config needs"
    )
    add_config_argument(iam)
    iam.set_defaults(func=_cmd_iam_policy)


def _cmd_iam_policy(args: argparse.Namespace) -> int:
    print(json.dumps(iam_policy(load_config(args.config)), indent=2))
    return EXIT_OK


def iam_policy(settings: Settings) -> dict[str, Any]:
    """The policy document for ``settings``: statements in a fixed order, resources sorted."""
    streams: set[str] = set()
    tables: set[str] = set()
    kinesis_streams: set[str] = set()
    region = settings.aws.region
    for processor in settings.processors:
        if processor.source.kinesis is not None:
            kinesis_streams.add(_kinesis_stream(processor.source.kinesis, region))
        elif processor.source.dynamodb is not None:
            stream, table = _stream_resources(processor.source.dynamodb, region)
            streams.add(stream)
            if table:
                tables.add(table)
    statements: list[dict[str, Any]] = []
    if streams:
        statements.append(_allow("ReadStreams", STREAM_READ_ACTIONS, streams))
        statements.append(_allow("ListStreams", ["dynamodb:ListStreams"], ["*"]))
    if tables:
        statements.append(_allow("ResolveTableStreams", ["dynamodb:DescribeTable"], tables))
    if kinesis_streams:
        statements.append(_allow("ReadKinesisStreams", KINESIS_READ_ACTIONS, kinesis_streams))
        # A customer managed key is not in the config: any key, for these streams only.
        context = {KINESIS_ENCRYPTION_CONTEXT: sorted(kinesis_streams)}
        statements.append(
            _allow("DecryptKinesisRecords", ["kms:Decrypt"], ["*"], {"StringLike": context})
        )
    statements += _destination_statements(settings)
    return {"Version": "2012-10-17", "Statement": statements}


def _allow(
    sid: str,
    actions: Iterable[str],
    resources: Iterable[str],
    condition: dict[str, Any] | None = None,
) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(actions),
        "Resource": sorted(resources),
    }
    if condition:
        statement["Condition"] = condition
    return statement


def _partition(region: str | None) -> str:
    if region and region.startswith("cn-"):
        return "aws-cn"
    if region and region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _stream_resources(source: DynamoDBSourceConfig, region: str | None) -> tuple[str, str | None]:
    """(stream resource, table resource or None) of one DynamoDB source."""
    if source.stream_arn:
        return source.stream_arn, None
    table = str(source.table)
    if not _TABLE_ARN.fullmatch(table):
        table = f"arn:{_partition(region)}:dynamodb:{region or '*'}:*:table/{table}"
    return f"{table}/stream/*", table


def _kinesis_stream(source: KinesisSourceConfig, region: str | None) -> str:
    """The ARN (or ARN pattern: any account, ``*`` region when none is set) of a Kinesis source."""
    if source.stream_arn:
        return source.stream_arn
    return f"arn:{_partition(region)}:kinesis:{region or '*'}:*:stream/{source.stream_name}"


def _destination_statements(settings: Settings) -> list[dict[str, Any]]:
    queues: set[str] = set()
    topics: set[str] = set()
    prefixes: dict[str, set[str]] = {}  # bucket ARN -> key prefixes ("" = the whole bucket)
    for processor in settings.processors:
        if processor.destination_config is None:
            continue
        target = processor.destination_config.on_failure.destination
        if ":sqs:" in target:
            queues.add(target)
        elif ":sns:" in target:
            topics.add(target)
        elif bucket := _s3_bucket(target, settings.aws.region):
            prefixes.setdefault(bucket[0], set()).add(bucket[1])
    statements: list[dict[str, Any]] = []
    if queues:
        statements.append(_allow("SendFailuresToSqs", ["sqs:SendMessage"], queues))
    if topics:
        statements.append(_allow("PublishFailuresToSns", ["sns:Publish"], topics))
    objects = {f"{arn}/{prefix}*" for arn, keys in prefixes.items() for prefix in keys}
    if objects:
        statements.append(_allow("WriteFailuresToS3", ["s3:PutObject"], objects))
        statements.append(_allow("ReadFailuresFromS3", ["s3:GetObject"], objects))
    for number, (arn, keys) in enumerate(sorted(prefixes.items()), start=1):
        sid = "ListFailuresBucket" + (str(number) if number > 1 else "")
        condition = None
        if "" not in keys:
            condition = {"StringLike": {"s3:prefix": sorted(f"{key}*" for key in keys)}}
        statements.append(_allow(sid, ["s3:ListBucket"], [arn], condition))
    return statements


def _s3_bucket(target: str, region: str | None) -> tuple[str, str] | None:
    """(bucket ARN, key prefix) of an S3 destination; None for sql and file destinations."""
    if match := _S3_ARN.fullmatch(target):
        return f"arn:{match['partition']}:s3:::{match['bucket']}", ""
    if match := _S3_URL.fullmatch(target):
        return f"arn:{_partition(region)}:s3:::{match['bucket']}", match["prefix"] or ""
    return None
