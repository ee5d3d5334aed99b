"""``shardwise import-esm``: event source mappings from the Lambda API and from templates become
processors YAML that loads as a shardwise config, with every ESM parameter accounted for."""

from __future__ import annotations

import argparse
import io
import json
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from shardwise.cli.esm_import import (
    PLACEHOLDER_HANDLER,
    EsmImportError,
    add_import_esm_command,
    esm_to_processor_yaml,
)
from shardwise.config import ProcessorConfig, Settings, parse_config

STREAM_ARN = "arn:aws:dynamodb:us-east-2:123456789012:table/Orders/stream/2024-11-05T19:35:38.089"
DLQ = "arn:aws:sqs:us-east-2:123456789012:orders-dlq"
ESM_TYPE = "AWS::Lambda::EventSourceMapping"
INSERTS = '{"eventName": ["INSERT"]}'
SHIPPED = '{"dynamodb": {"NewImage": {"status": {"S": ["SHIPPED"]}}}}'

# Everything `aws lambda get-event-source-mapping` prints for a DynamoDB mapping.
GET_ESM: dict[str, Any] = {
    "UUID": "14e0db71-5d35-4eb5-b481-8945cf9d10c2",
    "StartingPosition": "LATEST",
    "BatchSize": 500,
    "MaximumBatchingWindowInSeconds": 5,
    "ParallelizationFactor": 4,
    "EventSourceArn": STREAM_ARN,
    "FilterCriteria": {"Filters": [{"Pattern": INSERTS}, {"Pattern": SHIPPED}]},
    "FunctionArn": "arn:aws:lambda:us-east-2:123456789012:function:orders-view:live",
    "LastModified": 1731244760.0,
    "LastProcessingResult": "OK",
    "State": "Enabled",
    "StateTransitionReason": "User action",
    "DestinationConfig": {"OnFailure": {"Destination": DLQ}},
    "MaximumRecordAgeInSeconds": 3600,
    "BisectBatchOnFunctionError": True,
    "MaximumRetryAttempts": 3,
    "TumblingWindowInSeconds": 120,
    "FunctionResponseTypes": ["ReportBatchItemFailures"],
    "EventSourceMappingArn": "arn:aws:lambda:us-east-2:123456789012:event-source-mapping:14e0db71",
    "MetricsConfig": {"Metrics": ["EventCount"]},
    "KMSKeyArn": "arn:aws:kms:us-east-2:123456789012:key/0f3c",
}

SAM_TEMPLATE = textwrap.dedent(
    """\
    AWSTemplateFormatVersion: '2010-09-09'
    Transform: AWS::Serverless-2016-10-31
    Parameters:
      BatchSize: {Type: Number, Default: 25}
    Resources:
      OrdersTable:
        Type: AWS::DynamoDB::Table
        Properties:
          TableName: Orders
          StreamSpecification: {StreamViewType: NEW_AND_OLD_IMAGES}
      AuditTable:
        Type: AWS::DynamoDB::Table
        Properties:
          StreamSpecification: {StreamViewType: NEW_IMAGE}
      OrdersFunction:
        Type: AWS::Serverless::Function
        Properties:
          Runtime: python3.12
          Handler: app.handler
          Events:
            Stream:
              Type: DynamoDB
              Properties:
                Stream: !GetAtt OrdersTable.StreamArn
                StartingPosition: TRIM_HORIZON
                BatchSize: 10
                FilterCriteria:
                  Filters:
                    - Pattern: '{"eventName": ["INSERT"]}'
            Jobs:
              Type: SQS
              Properties:
                Queue: !GetAtt JobsQueue.Arn
      AuditFunction:
        Type: AWS::Serverless::Function
        Properties: {Runtime: python3.12, Handler: audit.handler, FunctionName: audit-log}
      AuditMapping:
        Type: AWS::Lambda::EventSourceMapping
        Properties:
          FunctionName: !Ref AuditFunction
          EventSourceArn: !GetAtt [AuditTable, StreamArn]
          StartingPosition: LATEST
          BatchSize: !Ref BatchSize
          Enabled: false
          DestinationConfig:
            OnFailure:
              Destination: !Sub arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:audit-dlq
      JobsQueue:
        Type: AWS::SQS::Queue
    """
)

CFN_JSON: dict[str, Any] = {
    "Resources": {
        "InsertsMapping": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "FunctionName": "orders-view",
                "EventSourceArn": STREAM_ARN,
                "StartingPosition": "TRIM_HORIZON",
                "FilterCriteria": {"Filters": [{"Pattern": INSERTS}]},
            },
        },
        "ShippedMapping": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "FunctionName": {"Fn::GetAtt": ["OrdersView", "Arn"]},
                "EventSourceArn": STREAM_ARN,
                "StartingPosition": "LATEST",
                "FunctionResponseTypes": ["ReportBatchItemFailures"],
            },
        },
        "OrdersView": {
            "Type": "AWS::Lambda::Function",
            "Properties": {"FunctionName": "orders-view", "Runtime": "python3.12"},
        },
        "ClicksMapping": {
            "Type": "AWS::Lambda::EventSourceMapping",
            "Properties": {
                "FunctionName": "clicks",
                "EventSourceArn": "arn:aws:kinesis:us-east-2:123456789012:stream/clicks",
                "StartingPosition": "LATEST",
            },
        },
    }
}

KINESIS_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
CLICKS_DLQ = "arn:aws:sqs:us-east-1:123456789012:clicks-dlq"
CLICK_EVENTS = '{"data": {"type": ["click"]}}'
NEW_YEAR = datetime(2026, 1, 1, tzinfo=UTC)  # 1767225600 epoch seconds

# A SAM template whose function reads a KMS-encrypted Kinesis stream through a Kinesis event
# with every setting, and a second mapping through an enhanced fan-out consumer.
KINESIS_SAM_TEMPLATE = textwrap.dedent(
    """\
    AWSTemplateFormatVersion: '2010-09-09'
    Transform: AWS::Serverless-2016-10-31
    Resources:
      ClicksStream:
        Type: AWS::Kinesis::Stream
        Properties:
          Name: clicks
          ShardCount: 4
          StreamEncryption: {EncryptionType: KMS, KeyId: alias/clicks}
      ClicksDlq:
        Type: AWS::SQS::Queue
      ClicksConsumer:
        Type: AWS::Kinesis::StreamConsumer
        Properties:
          ConsumerName: audit
          StreamARN: !GetAtt ClicksStream.Arn
      ClicksFunction:
        Type: AWS::Serverless::Function
        Properties:
          FunctionName: clicks-counter
          Runtime: python3.12
          Handler: app.clicks.handler
          Events:
            Clicks:
              Type: Kinesis
              Properties:
                Stream: !GetAtt ClicksStream.Arn
                StartingPosition: TRIM_HORIZON
                BatchSize: 200
                MaximumBatchingWindowInSeconds: 10
                ParallelizationFactor: 1
                BisectBatchOnFunctionError: true
                MaximumRetryAttempts: 5
                MaximumRecordAgeInSeconds: 3600
                FunctionResponseTypes: [ReportBatchItemFailures]
                TumblingWindowInSeconds: 60
                DestinationConfig:
                  OnFailure:
                    Type: SQS
                    Destination: !GetAtt ClicksDlq.Arn
                FilterCriteria:
                  Filters:
                    - Pattern: '{"data": {"type": ["click"]}}'
                KmsKeyArn: arn:aws:kms:us-east-1:123456789012:key/0f3c
                MetricsConfig: {Metrics: [EventCount]}
            Jobs:
              Type: SQS
              Properties:
                Queue: !GetAtt ClicksDlq.Arn
      AuditFunction:
        Type: AWS::Serverless::Function
        Properties: {FunctionName: clicks-audit, Runtime: python3.12, Handler: audit.handler}
      AuditMapping:
        Type: AWS::Lambda::EventSourceMapping
        Properties:
          FunctionName: !Ref AuditFunction
          EventSourceArn: !GetAtt ClicksConsumer.ConsumerARN
          StartingPosition: AT_TIMESTAMP
          StartingPositionTimestamp: 1767225600
          ParallelizationFactor: 4
    """
)

# What `aws lambda get-event-source-mapping` prints for a Kinesis mapping at a timestamp.
KINESIS_GET_ESM: dict[str, Any] = {
    "UUID": "2b7c1e8a-4f0d-4b0e-9a51-1f1d6c1c3a90",
    "StartingPosition": "AT_TIMESTAMP",
    "StartingPositionTimestamp": 1767225600.0,
    "BatchSize": 500,
    "MaximumBatchingWindowInSeconds": 1,
    "ParallelizationFactor": 2,
    "EventSourceArn": KINESIS_ARN,
    "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:clicks-counter",
    "LastModified": 1767225000.0,
    "LastProcessingResult": "No records processed",
    "State": "Enabled",
    "StateTransitionReason": "User action",
    "DestinationConfig": {"OnFailure": {"Destination": CLICKS_DLQ}},
    "MaximumRecordAgeInSeconds": 86400,
    "BisectBatchOnFunctionError": False,
    "MaximumRetryAttempts": 10,
    "TumblingWindowInSeconds": 0,
    "FunctionResponseTypes": [],
    "EventSourceMappingArn": "arn:aws:lambda:us-east-1:123456789012:event-source-mapping:2b7c1e8a",
}

# Keys the importer writes that shardwise.config may not know yet; stripped before loading (below).
NEW_KEYS = ("parallelization_factor", "tumbling_window_in_seconds", "filter_criteria")


def load(output: str, env: dict[str, str] | None = None) -> Settings:
    """The imported YAML as shardwise loads it, once the handler placeholder is replaced.

    Keys of ``NEW_KEYS`` that ``ProcessorConfig`` does not define yet are removed first, so this
    round trip checks everything else today and all of it once shardwise.config learns them.
    """
    document = yaml.safe_load(output)
    for processor in document["processors"]:
        assert processor["handler"] in (PLACEHOLDER_HANDLER, "app.handler")
        processor["handler"] = "app.orders:handler"
        for key in NEW_KEYS:
            if key not in ProcessorConfig.model_fields:
                processor.pop(key, None)
    return parse_config(yaml.safe_dump(document), env=env or {})


def comment_of(output: str, key: str) -> str:
    (line,) = [line for line in output.splitlines() if line.strip().startswith(f"{key}:")]
    return line.partition("  # ")[2]


class TestGetEventSourceMapping:
    """The JSON of aws lambda get-event-source-mapping, every field accounted for."""

    def test_every_setting_loads(self) -> None:
        output = esm_to_processor_yaml(json.dumps(GET_ESM))
        (processor,) = load(output).processors
        assert processor.name == "orders-view"
        assert processor.source.dynamodb is not None
        assert processor.source.dynamodb.stream_arn == STREAM_ARN
        assert processor.starting_position == "LATEST"
        assert processor.batch_size == 500
        assert processor.maximum_batching_window_in_seconds == 5
        assert processor.maximum_retry_attempts == 3
        assert processor.bisect_batch_on_function_error
        assert processor.maximum_record_age_in_seconds == 3600
        assert processor.reports_batch_item_failures
        assert processor.enabled
        assert processor.destination_config is not None
        assert processor.destination_config.on_failure.destination == DLQ

    def test_new_settings_are_written_and_flagged(self) -> None:
        output = esm_to_processor_yaml(json.dumps(GET_ESM))
        processor = yaml.safe_load(output)["processors"][0]
        # A tumbling window runs with one lane: the factor of 4 is written as 1, and said so.
        assert processor["parallelization_factor"] == 1
        assert "was 4" in comment_of(output, "parallelization_factor")
        assert processor["tumbling_window_in_seconds"] == 120
        assert processor["filter_criteria"] == {
            "filters": [{"pattern": INSERTS}, {"pattern": SHIPPED}]
        }
        without_window = {**GET_ESM, "TumblingWindowInSeconds": 0}
        lanes = yaml.safe_load(esm_to_processor_yaml(json.dumps(without_window)))
        assert lanes["processors"][0]["parallelization_factor"] == 4

    def test_defaults_of_new_settings_are_not_flagged(self) -> None:
        mapping = {**GET_ESM, "ParallelizationFactor": 1, "TumblingWindowInSeconds": 0}
        output = esm_to_processor_yaml(json.dumps(mapping))
        assert comment_of(output, "parallelization_factor") == "ParallelizationFactor"
        assert comment_of(output, "tumbling_window_in_seconds") == "TumblingWindowInSeconds"

    @pytest.mark.parametrize(
        ("key", "esm_name"),
        [
            ("batch_size", "BatchSize"),
            ("starting_position", "StartingPosition"),
            ("maximum_retry_attempts", "MaximumRetryAttempts"),
            ("function_response_types", "FunctionResponseTypes"),
            ("stream_arn", "EventSourceArn"),
            ("destination", "DestinationConfig.OnFailure.Destination"),
            ("enabled", "State: Enabled"),
        ],
    )
    def test_comments_name_the_esm_parameter(self, key: str, esm_name: str) -> None:
        assert comment_of(esm_to_processor_yaml(json.dumps(GET_ESM)), key) == esm_name

    def test_unknown_keys_are_listed_not_dropped(self) -> None:
        output = esm_to_processor_yaml(json.dumps({**GET_ESM, "ShinyNewSetting": {"a": 1}}))
        tail = output[output.index("# Not carried over") :]
        for key in ("MetricsConfig", "KMSKeyArn", "ShinyNewSetting"):
            assert f"#   {key}: " in tail
        for known in ("UUID", "LastModified", "StateTransitionReason", "FunctionArn"):
            assert f"#   {known}:" not in output

    def test_parts_of_known_keys_without_a_setting_are_listed(self) -> None:
        destinations = {"OnFailure": {"Destination": DLQ}, "OnSuccess": {"Destination": DLQ}}
        criteria = {"Fn::If": ["Prod", {"Filters": []}, {"Ref": "AWS::NoValue"}]}
        mapping = {**GET_ESM, "DestinationConfig": destinations, "FilterCriteria": criteria}
        output = esm_to_processor_yaml(json.dumps(mapping))
        assert "#   DestinationConfig.OnSuccess: " in output
        assert "#   FilterCriteria.Fn::If: " in output

    def test_handler_placeholder_says_why(self) -> None:
        output = esm_to_processor_yaml(json.dumps(GET_ESM))
        assert f"handler: {PLACEHOLDER_HANDLER}  # CHANGE_ME" in output

    def test_name_and_handler_options(self) -> None:
        output = esm_to_processor_yaml(json.dumps(GET_ESM), name="orders", handler="app.handler")
        processor = yaml.safe_load(output)["processors"][0]
        assert (processor["name"], processor["handler"]) == ("orders", "app.handler")

    @pytest.mark.parametrize(
        "handler", ["app.orders.handler", "app/orders.handler", "app.orders:handler"]
    )
    def test_handler_moves_unchanged_and_loads(self, handler: str) -> None:
        """The function's Handler setting is written as Lambda has it, and validates."""
        output = esm_to_processor_yaml(json.dumps(GET_ESM), handler=handler)
        assert f"    handler: {handler}\n" in output
        document = yaml.safe_load(output)
        for processor in document["processors"]:
            for key in NEW_KEYS:
                if key not in ProcessorConfig.model_fields:
                    processor.pop(key, None)
        (processor,) = parse_config(yaml.safe_dump(document), env={}).processors
        assert processor.handler == handler

    def test_a_bad_handler_is_refused(self) -> None:
        with pytest.raises(EsmImportError, match=r"--handler 'app/orders\.py': names a file"):
            esm_to_processor_yaml(json.dumps(GET_ESM), handler="app/orders.py")

    def test_list_event_source_mappings(self) -> None:
        second = {**GET_ESM, "UUID": "2", "FunctionArn": "arn:aws:lambda:r:1:function:audit"}
        listing = {"EventSourceMappings": [GET_ESM, second]}
        names = [p.name for p in load(esm_to_processor_yaml(json.dumps(listing))).processors]
        assert names == ["orders-view", "audit"]


class TestState:
    """Disabled mappings stay disabled."""

    @pytest.mark.parametrize(
        ("change", "enabled"),
        [
            ({"State": "Disabled"}, False),
            ({"State": "Disabling"}, False),
            ({"State": "Updating"}, True),
            ({"State": "Enabled", "Enabled": False}, False),
        ],
    )
    def test_enabled(self, change: dict[str, Any], enabled: bool) -> None:
        output = esm_to_processor_yaml(json.dumps({**GET_ESM, **change}))
        assert load(output).processors[0].enabled is enabled


class TestSamTemplate:
    """A SAM template in YAML with short-form intrinsics (!GetAtt, !Ref, !Sub)."""

    ENV: ClassVar[dict[str, str]] = {
        "AUDIT_TABLE_STREAM_ARN": STREAM_ARN.replace("Orders", "Audit"),
        "BATCH_SIZE": "25",
        "AWS_PARTITION": "aws",
        "AWS_REGION": "us-east-2",
        "AWS_ACCOUNT_ID": "123456789012",
    }

    def test_mappings_and_dynamodb_events_become_processors(self) -> None:
        settings = load(esm_to_processor_yaml(SAM_TEMPLATE), env=self.ENV)
        orders, audit = settings.processors
        assert orders.source.dynamodb is not None
        assert audit.source.dynamodb is not None
        assert (orders.name, orders.source.dynamodb.table, orders.batch_size) == (
            "OrdersFunction",
            "Orders",
            10,
        )
        assert audit.name == "audit-log"
        assert audit.source.dynamodb.stream_arn == self.ENV["AUDIT_TABLE_STREAM_ARN"]
        assert (audit.batch_size, audit.enabled) == (25, False)
        assert audit.destination_config is not None
        assert audit.destination_config.on_failure.destination.endswith(":123456789012:audit-dlq")

    def test_intrinsics_become_variables_with_a_comment(self) -> None:
        output = esm_to_processor_yaml(SAM_TEMPLATE)
        assert "stream_arn: ${AUDIT_TABLE_STREAM_ARN}" in output
        assert "from !GetAtt AuditTable.StreamArn -- set AUDIT_TABLE_STREAM_ARN" in output
        assert "batch_size: ${BATCH_SIZE}  # BatchSize: from !Ref BatchSize" in output
        assert (
            "destination: arn:${AWS_PARTITION}:sqs:${AWS_REGION}:${AWS_ACCOUNT_ID}:audit-dlq"
            in (output)
        )
        assert (
            "table: Orders  # EventSourceArn: !GetAtt OrdersTable.StreamArn, the table's" in output
        )

    def test_other_event_sources_are_skipped_and_named(self) -> None:
        output = esm_to_processor_yaml(SAM_TEMPLATE)
        assert "# Skipped, not DynamoDB or Kinesis: OrdersFunction.Events.Jobs (SQS)." in output

    def test_unresolvable_intrinsics_do_not_crash(self) -> None:
        template = SAM_TEMPLATE.replace(
            "StartingPosition: LATEST", "StartingPosition: !If [IsProd, LATEST, TRIM_HORIZON]"
        )
        output = esm_to_processor_yaml(template)
        assert "starting_position: ${CHANGE_ME}  # StartingPosition: from Fn::If" in output


class TestIntrinsics:
    """Intrinsics become shardwise's ${NAME} variables; CloudFormation's ${!x} stays literal."""

    def test_sub(self) -> None:
        arn = "arn:aws:dynamodb:${AWS::Region}:${AWS::AccountId}:table/T/stream/${!Label}"
        props = {"EventSourceArn": {"Fn::Sub": arn}, "FunctionName": "f"}
        output = esm_to_processor_yaml(
            json.dumps({"Resources": {"M": {"Type": ESM_TYPE, "Properties": props}}})
        )
        assert (
            "stream_arn: arn:aws:dynamodb:${AWS_REGION}:${AWS_ACCOUNT_ID}:table/T/stream/$${Label}"
            in output
        )
        assert "-- set AWS_REGION, AWS_ACCOUNT_ID, or write the value in" in output

    def test_import_value(self) -> None:
        props = {
            "EventSourceArn": {"Fn::ImportValue": "shared-OrdersStreamArn"},
            "FunctionName": "f",
        }
        output = esm_to_processor_yaml(
            json.dumps({"Resources": {"M": {"Type": ESM_TYPE, "Properties": props}}})
        )
        assert (
            "stream_arn: ${SHARED_ORDERS_STREAM_ARN}  # EventSourceArn: from !ImportValue" in output
        )


class TestCloudFormationJson:
    """A JSON template with two DynamoDB mappings and one Kinesis mapping."""

    def test_each_mapping_a_processor(self) -> None:
        output = esm_to_processor_yaml(json.dumps(CFN_JSON))
        inserts, shipped, clicks = load(output).processors
        assert (inserts.name, shipped.name) == ("orders-view-1", "orders-view-2")
        assert (inserts.starting_position, shipped.starting_position) == ("TRIM_HORIZON", "LATEST")
        assert shipped.reports_batch_item_failures
        assert (inserts.source.kind, shipped.source.kind) == ("dynamodb", "dynamodb")
        assert clicks.name == "clicks"
        assert clicks.source.kinesis is not None
        assert clicks.source.kinesis.stream_arn == (
            "arn:aws:kinesis:us-east-2:123456789012:stream/clicks"
        )
        assert "Skipped" not in output

    def test_a_pattern_written_as_yaml_is_kept_as_json(self) -> None:
        mapping = CFN_JSON["Resources"]["InsertsMapping"]["Properties"]
        template = {"Resources": {"M": {"Type": "AWS::Lambda::EventSourceMapping", "Properties": {
            **mapping, "FilterCriteria": {"Filters": [{"Pattern": {"eventName": ["INSERT"]}}]}
        }}}}  # fmt: skip
        processor = yaml.safe_load(esm_to_processor_yaml(json.dumps(template)))["processors"][0]
        assert json.loads(processor["filter_criteria"]["filters"][0]["pattern"]) == {
            "eventName": ["INSERT"]
        }


class TestFilterPatterns:
    """Patterns are copied verbatim, and checked with shardwise's own filter compiler."""

    def test_patterns_survive_yaml_quoting(self) -> None:
        tricky = '{"dynamodb": {"NewImage": {"note": {"S": ["it\'s: #1 ${HOME}"]}}}}'
        mapping = {**GET_ESM, "FilterCriteria": {"Filters": [{"Pattern": tricky}]}}
        output = esm_to_processor_yaml(json.dumps(mapping))
        written = yaml.safe_load(output)["processors"][0]["filter_criteria"]["filters"][0]
        assert written["pattern"] == tricky.replace("${", "$${")  # shardwise reads $${ as ${

    def test_invalid_pattern_is_kept_and_flagged(self) -> None:
        mapping = {**GET_ESM, "FilterCriteria": {"Filters": [{"Pattern": '{"eventName": "X"}'}]}}
        output = esm_to_processor_yaml(json.dumps(mapping))
        assert "# Lambda and shardwise reject this pattern at eventName: values to match" in output

    def test_pattern_notes_become_comments(self) -> None:
        pattern = '{"dynamodb": {"NewImage": {"total": {"N": [{"numeric": [">", 5]}]}}}}'
        mapping = {**GET_ESM, "FilterCriteria": {"Filters": [{"Pattern": pattern}]}}
        assert "DynamoDB numbers are strings" in esm_to_processor_yaml(json.dumps(mapping))


class TestKinesisSamTemplate:
    """A SAM Kinesis event and a mapping through an enhanced fan-out consumer, both loaded."""

    ENV: ClassVar[dict[str, str]] = {"CLICKS_DLQ_ARN": CLICKS_DLQ}

    def test_every_setting_of_the_event_loads(self) -> None:
        output = esm_to_processor_yaml(KINESIS_SAM_TEMPLATE)
        clicks, _ = load(output, env=self.ENV).processors
        assert clicks.name == "clicks-counter"
        assert clicks.source.kind == "kinesis"
        assert clicks.source.kinesis is not None
        assert clicks.source.kinesis.stream_name == "clicks"  # the stream resource's Name
        assert clicks.starting_position == "TRIM_HORIZON"
        assert clicks.batch_size == 200
        assert clicks.maximum_batching_window_in_seconds == 10
        assert clicks.parallelization_factor == 1
        assert clicks.bisect_batch_on_function_error
        assert clicks.maximum_retry_attempts == 5
        assert clicks.maximum_record_age_in_seconds == 3600
        assert clicks.reports_batch_item_failures
        assert clicks.tumbling_window_in_seconds == 60
        assert clicks.destination_config is not None
        assert clicks.destination_config.on_failure.destination == CLICKS_DLQ
        assert clicks.filter_criteria is not None
        assert [f.pattern for f in clicks.filter_criteria.filters] == [CLICK_EVENTS]
        assert "stream_name: clicks  # EventSourceArn: !GetAtt ClicksStream.Arn" in output

    def test_kinesis_only_settings_shardwise_lacks_are_listed(self) -> None:
        output = esm_to_processor_yaml(KINESIS_SAM_TEMPLATE)
        clicks = output[output.index("from ClicksFunction.Events.Clicks") :]
        clicks = clicks[: clicks.index("  - name:")]
        listed = clicks[clicks.index("# Not carried over") :]
        assert '#   KmsKeyArn: "arn:aws:kms:us-east-1:123456789012:key/0f3c"' in listed
        assert '#   MetricsConfig: {"Metrics": ["EventCount"]}' in listed

    def test_a_fan_out_consumer_becomes_its_stream_and_is_listed(self) -> None:
        output = esm_to_processor_yaml(KINESIS_SAM_TEMPLATE)
        _, audit = load(output, env=self.ENV).processors
        assert audit.name == "clicks-audit"
        assert audit.source.kinesis is not None
        assert audit.source.kinesis.stream_name == "clicks"  # the consumer's StreamARN
        assert audit.parallelization_factor == 4
        assert audit.starting_position == "AT_TIMESTAMP"
        assert audit.starting_position_timestamp == NEW_YEAR
        audit_yaml = output[output.index("from AuditMapping") :]
        assert "was enhanced fan-out consumer audit" in comment_of(audit_yaml, "stream_name")
        assert (
            '#   EventSourceArn (enhanced fan-out consumer): {"Fn::GetAtt": '
            '["ClicksConsumer", "ConsumerARN"]}' in output
        )

    def test_other_events_are_still_skipped(self) -> None:
        output = esm_to_processor_yaml(KINESIS_SAM_TEMPLATE)
        assert "# Skipped, not DynamoDB or Kinesis: ClicksFunction.Events.Jobs (SQS)." in output

    def test_patterns_get_no_dynamodb_notes_but_rejections(self) -> None:
        """Notes on DynamoDB records' shape would be wrong about a Kinesis record's."""
        output = esm_to_processor_yaml(KINESIS_SAM_TEMPLATE)
        assert "stream records have no field" not in output  # 'data' is a Kinesis field
        bad = KINESIS_SAM_TEMPLATE.replace(CLICK_EVENTS, '{"data": "click"}')
        assert "# Lambda and shardwise reject this pattern at data:" in esm_to_processor_yaml(bad)


class TestKinesisGetEventSourceMapping:
    """get-event-source-mapping JSON of a Kinesis mapping, StartingPosition AT_TIMESTAMP."""

    def test_every_setting_loads(self) -> None:
        output = esm_to_processor_yaml(json.dumps(KINESIS_GET_ESM))
        (processor,) = load(output).processors
        assert processor.name == "clicks-counter"
        assert processor.source.kinesis is not None
        assert processor.source.kinesis.stream_arn == KINESIS_ARN
        assert processor.starting_position == "AT_TIMESTAMP"
        assert processor.starting_position_timestamp == NEW_YEAR
        assert processor.batch_size == 500
        assert processor.maximum_batching_window_in_seconds == 1
        assert processor.parallelization_factor == 2
        assert not processor.bisect_batch_on_function_error
        assert processor.maximum_retry_attempts == 10
        assert processor.maximum_record_age_in_seconds == 86400
        assert processor.tumbling_window_in_seconds == 0
        assert not processor.reports_batch_item_failures
        assert processor.enabled
        assert processor.destination_config is not None
        assert processor.destination_config.on_failure.destination == CLICKS_DLQ
        assert "# Not carried over" not in output  # every key has a setting, or is a fact

    @pytest.mark.parametrize(
        "timestamp",
        [
            1767225600.0,  # the API, and the AWS CLI v1
            1767225600,  # CloudFormation's Number
            "2026-01-01T00:00:00+00:00",  # the AWS CLI v2 (cli_timestamp_format: iso8601)
            "2026-01-01T01:00:00+01:00",
        ],
    )
    def test_timestamp_is_written_as_iso_8601_utc(self, timestamp: float | str) -> None:
        mapping = {**KINESIS_GET_ESM, "StartingPositionTimestamp": timestamp}
        output = esm_to_processor_yaml(json.dumps(mapping))
        written = yaml.safe_load(output)["processors"][0]["starting_position_timestamp"]
        assert written == "2026-01-01T00:00:00Z"
        assert load(output).processors[0].starting_position_timestamp == NEW_YEAR

    def test_fan_out_consumer_arn(self) -> None:
        consumer = f"{KINESIS_ARN}/consumer/audit:1767225000"
        output = esm_to_processor_yaml(json.dumps({**KINESIS_GET_ESM, "EventSourceArn": consumer}))
        (processor,) = load(output).processors
        assert processor.source.kinesis is not None
        assert processor.source.kinesis.stream_arn == KINESIS_ARN
        assert f'#   EventSourceArn (enhanced fan-out consumer): "{consumer}"' in output

    def test_kms_key_and_metrics_are_listed(self) -> None:
        extra: dict[str, Any] = {
            "KMSKeyArn": "arn:aws:kms:us-east-1:123456789012:key/0f3c",
            "MetricsConfig": {"Metrics": ["EventCount"]},
        }
        output = esm_to_processor_yaml(json.dumps({**KINESIS_GET_ESM, **extra}))
        tail = output[output.index("# Not carried over") :]
        assert '#   KMSKeyArn: "arn:aws:kms:us-east-1:123456789012:key/0f3c"' in tail
        assert '#   MetricsConfig: {"Metrics": ["EventCount"]}' in tail

    def test_intrinsic_stream_and_timestamp(self) -> None:
        """An ARN from a parameter is taken as Kinesis by AT_TIMESTAMP (Kinesis only), and an
        epoch-seconds timestamp from a variable loads."""
        props = {
            "FunctionName": "clicks",
            "EventSourceArn": {"Ref": "ClicksStreamArn"},
            "StartingPosition": "AT_TIMESTAMP",
            "StartingPositionTimestamp": {"Ref": "StartAt"},
        }
        template = {"Resources": {"M": {"Type": ESM_TYPE, "Properties": props}}}
        output = esm_to_processor_yaml(json.dumps(template))
        assert "stream_arn: ${CLICKS_STREAM_ARN}" in output
        env = {"CLICKS_STREAM_ARN": KINESIS_ARN, "START_AT": "1767225600"}
        (processor,) = load(output, env=env).processors
        assert processor.source.kinesis is not None
        assert processor.starting_position_timestamp == NEW_YEAR

    def test_sub_arn_names_its_service(self) -> None:
        arn = "arn:${AWS::Partition}:kinesis:${AWS::Region}:${AWS::AccountId}:stream/clicks"
        props = {
            "FunctionName": "f",
            "EventSourceArn": {"Fn::Sub": arn},
            "StartingPosition": "LATEST",
        }
        template = {"Resources": {"M": {"Type": ESM_TYPE, "Properties": props}}}
        env = {"AWS_PARTITION": "aws", "AWS_REGION": "us-east-1", "AWS_ACCOUNT_ID": "123456789012"}
        (processor,) = load(esm_to_processor_yaml(json.dumps(template)), env=env).processors
        assert processor.source.kinesis is not None
        assert processor.source.kinesis.stream_arn == KINESIS_ARN


class TestRejected:
    """Sources other than DynamoDB Streams and Kinesis, and input that is not a mapping."""

    @pytest.mark.parametrize(
        ("arn", "service"),
        [
            ("arn:aws:sqs:us-east-2:123456789012:jobs", "SQS"),
            ("arn:aws:kafka:us-east-2:123456789012:cluster/c/1", "Amazon MSK"),
            ("arn:aws:mq:us-east-2:123456789012:broker:b:b-1", "Amazon MQ"),
        ],
    )
    def test_other_sources(self, arn: str, service: str) -> None:
        with pytest.raises(
            EsmImportError, match=rf"no DynamoDB or Kinesis stream to import .*\({service}\)"
        ):
            esm_to_processor_yaml(json.dumps({**GET_ESM, "EventSourceArn": arn}))

    def test_template_without_streams(self) -> None:
        props = {"FunctionName": "jobs", "EventSourceArn": {"Fn::GetAtt": ["JobsQueue", "Arn"]}}
        template = {
            "Resources": {
                "JobsMapping": {"Type": ESM_TYPE, "Properties": props},
                "JobsQueue": {"Type": "AWS::SQS::Queue"},
            }
        }
        with pytest.raises(EsmImportError, match=r"JobsMapping \(SQS\)"):
            esm_to_processor_yaml(json.dumps(template))

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ('{"FunctionName": "f"}', "neither event source mapping JSON nor"),
            ("[1, 2]", "expected a JSON object or a template"),
            ('{"UUID": ', "not JSON or YAML: Expecting value"),
            ("a: [", "not JSON or YAML"),
            (json.dumps({"Resources": {"M": {"Type": ESM_TYPE}}}), "M has no EventSourceArn"),
        ],
    )
    def test_not_a_mapping(self, text: str, message: str) -> None:
        with pytest.raises(EsmImportError, match=message):
            esm_to_processor_yaml(text)


class TestCommand:
    """shardwise import-esm FILE [--name N] [--handler H]: 0 with YAML, 2 with a message."""

    def run(self, *argv: str) -> int:
        parser = argparse.ArgumentParser(prog="shardwise")
        add_import_esm_command(parser.add_subparsers())
        args = parser.parse_args(["import-esm", *argv])
        code: int = args.func(args)
        return code

    def test_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        source = tmp_path / "esm.json"
        source.write_text(json.dumps(GET_ESM))
        assert self.run(str(source), "--name", "orders", "--handler", "app.orders:handler") == 0
        processor = yaml.safe_load(capsys.readouterr().out)["processors"][0]
        assert (processor["name"], processor["handler"]) == ("orders", "app.orders:handler")

    def test_stdin(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO(SAM_TEMPLATE))
        assert self.run("-") == 0
        assert "processors:" in capsys.readouterr().out

    def test_unreadable(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert self.run(str(tmp_path / "missing.json")) == 2
        assert "error: cannot read" in capsys.readouterr().err

    def test_unsupported(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        source = tmp_path / "sqs.json"
        source.write_text(json.dumps({**GET_ESM, "EventSourceArn": "arn:aws:sqs:r:1:jobs"}))
        assert self.run(str(source)) == 2
        captured = capsys.readouterr()
        assert (captured.out, "(SQS)" in captured.err) == ("", True)
