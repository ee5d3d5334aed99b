"""``shardwise import-esm``: Lambda event source mappings (ESM) as ``processors:`` YAML.

Reads ``aws lambda get-event-source-mapping`` JSON, or a CloudFormation/SAM template (JSON or
YAML) whose ``AWS::Lambda::EventSourceMapping`` resources and ``DynamoDB`` and ``Kinesis``
events of functions each become a processor, every key commented with its ESM parameter. The
unknowable is said, not guessed: the Python handler is ``CHANGE_ME.module.handler``;
``!Ref``/``!GetAtt``/``!Sub`` become ``${NAME}`` variables for shardwise to expand; settings
shardwise does not run yet are flagged; ESM keys without a shardwise setting are listed.
Sources other than DynamoDB Streams and Kinesis Data Streams are refused or skipped.

A Kinesis mapping's ``StartingPositionTimestamp`` (epoch seconds in the API and in templates)
is written as ISO 8601 UTC. An enhanced fan-out consumer as ``EventSourceArn`` becomes its
stream, read with GetRecords (shardwise has no fan-out), and the consumer is listed as not
carried over.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from shardwise.cli.exit_codes import EXIT_INVALID, EXIT_OK
from shardwise.dispatch.filters import FilterPatternError, compile_filters
from shardwise.processors import split_handler

__all__ = [
    "PLACEHOLDER_HANDLER",
    "EsmImportError",
    "add_import_esm_command",
    "esm_to_processor_yaml",
]

PLACEHOLDER_HANDLER = "CHANGE_ME.module.handler"

_SETTINGS = {  # ESM parameter -> processor key, copied as they are
    "StartingPosition": "starting_position",
    "StartingPositionTimestamp": "starting_position_timestamp",  # written as ISO 8601
    "BatchSize": "batch_size",
    "MaximumBatchingWindowInSeconds": "maximum_batching_window_in_seconds",
    "MaximumRetryAttempts": "maximum_retry_attempts",
    "BisectBatchOnFunctionError": "bisect_batch_on_function_error",
    "MaximumRecordAgeInSeconds": "maximum_record_age_in_seconds",
    "FunctionResponseTypes": "function_response_types",
    "ParallelizationFactor": "parallelization_factor",
    "TumblingWindowInSeconds": "tumbling_window_in_seconds",
}
# shardwise runs tumbling windows with one batch per shard in flight (a window's state
# follows the shard's order), so with a window the factor is written as 1 and flagged.
_ONE_LANE_FOR_WINDOWS = "shardwise runs tumbling windows with parallelization_factor 1"
_READ = set(  # read into other keys, or facts about the mapping rather than settings
    "EventSourceArn FunctionArn FunctionName State Enabled DestinationConfig FilterCriteria UUID "
    "EventSourceMappingArn LastModified LastProcessingResult StateTransitionReason".split()
)
# What a mapping reads: one of _READABLE (ARN service names), or the service shardwise skips.
_READABLE = ("dynamodb", "kinesis")
_SERVICES = {"sqs": "SQS", "kafka": "Amazon MSK", "mq": "Amazon MQ"}
_SERVICES |= {"rds": "DocumentDB", "docdb": "DocumentDB"}
_RESOURCES = {"AWS::DynamoDB::Table": "dynamodb", "AWS::Kinesis::Stream": "kinesis"}
_RESOURCES |= {"AWS::Kinesis::StreamConsumer": "kinesis"}
_RESOURCES |= {"AWS::SQS::Queue": "SQS", "AWS::MSK::Cluster": "Amazon MSK"}
_SAM_READABLE = {"DynamoDB": "dynamodb", "Kinesis": "kinesis"}
_SAM_OTHERS = {"SQS", "MSK", "MQ", "SelfManagedKafka", "DocumentDB"}
# An ARN's service, also when built with Fn::Sub (arn:${AWS::Partition}:kinesis:...).
_ARN_SERVICE = re.compile(r"arn:(?:aws[\w-]*|\$\{[^}]*\}):([\w-]+):")
# An enhanced fan-out consumer: arn:aws:kinesis:REGION:ACCOUNT:stream/NAME/consumer/C:EPOCH.
_CONSUMER = re.compile(
    r"(?P<stream>arn:aws[\w-]*:kinesis:[^:]+:[^:]+:stream/[^/]+)/consumer/(?P<name>[^:/]+)(?::\d+)?"
)
_FAN_OUT = "EventSourceArn (enhanced fan-out consumer)"


class EsmImportError(ValueError):
    """The input is not an event source mapping shardwise can import."""


@dataclass
class _Mapping:
    """One ESM: where it was found, its properties (ESM names), its function's name, and
    what it reads when its event type says so (a SAM ``Kinesis`` event: ``kinesis``)."""

    label: str
    props: dict[str, Any]
    name: str | None = None
    kind: str | None = None


def esm_to_processor_yaml(text: str, *, name: str | None = None, handler: str | None = None) -> str:
    """The ``processors:`` YAML for the mappings in ``text``; EsmImportError if there are none.

    ``handler`` is the function's Handler setting as Lambda has it (``app.orders.handler``),
    or ``module:function``; it is written unchanged.
    """
    if handler is not None:
        try:
            split_handler(handler)
        except ValueError as exc:
            raise EsmImportError(f"--handler {handler!r}: {exc}") from exc
    document = _load(text)
    found = document.get("Resources")
    resources: dict[str, Any] = found if isinstance(found, dict) else {}
    mappings, skipped = _mappings(document, resources)
    kinds = [_source_kind(mapping, resources) for mapping in mappings]
    pairs = list(zip(mappings, kinds, strict=True))
    skipped += [f"{m.label} ({kind})" for m, kind in pairs if kind not in _READABLE]
    if not (kept := [(m, kind) for m, kind in pairs if kind in _READABLE]):
        found = "; ".join(skipped) or "nothing"
        raise EsmImportError(f"no DynamoDB or Kinesis stream to import (found: {found})")
    lines = [
        "# From `shardwise import-esm`; comments name each key's ESM parameter. Disable the",
        "# mapping before starting shardwise (both would process the stream). shardwise starts",
        "# at starting_position: TRIM_HORIZON re-reads what the stream retains (DynamoDB: 24 h),",
        "# LATEST skips what came between, AT_TIMESTAMP re-reads from its time.",
        *([f"# Skipped, not DynamoDB or Kinesis: {'; '.join(skipped)}."] if skipped else []),
        "processors:",
    ]
    names = [name or mapping.name or "CHANGE_ME" for mapping, _ in kept]
    for n, ((mapping, kind), base) in enumerate(zip(kept, names, strict=True)):
        unique = base if names.count(base) == 1 else f"{base}-{names[:n].count(base) + 1}"
        lines += _processor(mapping, kind, unique, handler, resources)
    return "\n".join(lines) + "\n"


class _TemplateLoader(yaml.SafeLoader):
    """A SafeLoader that reads CloudFormation's short forms (``!GetAtt A.B``) as the long ones."""


def _short_form(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        scalar = loader.construct_scalar(node)
        value: Any = scalar.split(".", 1) if suffix == "GetAtt" else scalar
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]  # MappingNode
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _short_form)


def _load(text: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as json_error:
        try:
            document = yaml.load(text, Loader=_TemplateLoader)  # a SafeLoader
        except yaml.YAMLError as exc:
            looks_json = text.lstrip().startswith(("{", "["))
            raise EsmImportError(f"not JSON or YAML: {json_error if looks_json else exc}") from None
    if not isinstance(document, dict):
        raise EsmImportError(f"expected a JSON object or a template, not {document!r:.40}")
    return document


def _mappings(
    document: dict[str, Any], resources: dict[str, Any]
) -> tuple[list[_Mapping], list[str]]:
    """Every mapping in an API response or a template; and the SAM events shardwise skips."""
    mappings, skipped = [], []
    entries = [] if resources else document.get("EventSourceMappings", [document])
    for entry in entries if isinstance(entries, list) else [None]:
        if not isinstance(entry, dict) or "EventSourceArn" not in entry:
            raise EsmImportError("neither event source mapping JSON nor a CloudFormation template")
        name = _function_name(entry.get("FunctionArn", entry.get("FunctionName")), {})
        mappings.append(_Mapping(f"ESM {entry.get('UUID', '(no UUID)')}", entry, name))
    for logical_id, resource in resources.items():
        kind = resource.get("Type") if isinstance(resource, dict) else None
        props = (resource.get("Properties") if isinstance(resource, dict) else None) or {}
        if kind == "AWS::Lambda::EventSourceMapping":
            if "EventSourceArn" not in props:
                raise EsmImportError(f"{logical_id} has no EventSourceArn")
            name = _function_name(props.get("FunctionName"), resources)
            mappings.append(_Mapping(logical_id, dict(props), name))
        events = props.get("Events") if kind == "AWS::Serverless::Function" else None
        for event_id, event in (events or {}).items():
            event_type = event.get("Type") if isinstance(event, dict) else None
            if event_type in _SAM_OTHERS:
                skipped.append(f"{logical_id}.Events.{event_id} ({event_type})")
            elif event_type in _SAM_READABLE:
                settings = dict(event.get("Properties") or {})
                settings["EventSourceArn"] = settings.pop("Stream", None)
                name = _function_name({"Ref": logical_id}, resources)
                label, kind = f"{logical_id}.Events.{event_id}", _SAM_READABLE[event_type]
                mappings.append(_Mapping(label, settings, name, kind))
    return mappings, skipped


def _function_name(ref: object, resources: dict[str, Any]) -> str | None:
    """A function resource's ``FunctionName`` or logical id; a name from a name or an ARN."""
    if target := _logical_id(ref):
        resource = resources.get(target)
        props = (resource.get("Properties") if isinstance(resource, dict) else None) or {}
        return props["FunctionName"] if isinstance(props.get("FunctionName"), str) else target
    text = ref if isinstance(ref, str) else ""  # arn:aws:lambda:...:function:name[:alias]
    return text.rsplit(":function:", 1)[-1].split(":", 1)[0] or None


def _logical_id(ref: object) -> str | None:
    """The resource named in ``!Ref X`` or ``!GetAtt X.Arn``."""
    if isinstance(ref, dict) and isinstance(ref.get("Ref"), str):
        return str(ref["Ref"])
    target = ref.get("Fn::GetAtt") if isinstance(ref, dict) else None
    return str(target[0]) if isinstance(target, list) and target else None


def _source_kind(mapping: _Mapping, resources: dict[str, Any]) -> str:
    """What a mapping reads: ``dynamodb``, ``kinesis`` or the name of a service shardwise does
    not read. Told by the ARN's service, the resource an intrinsic names, or an ``Fn::Sub``
    ARN's service; else by the SAM event's type or AT_TIMESTAMP (Kinesis only); else taken
    to be DynamoDB."""
    source = mapping.props["EventSourceArn"]
    text = source if isinstance(source, str) else None
    if isinstance(source, dict):
        if kind := _RESOURCES.get(str(_resource(source, resources).get("Type"))):
            return kind
        text = json.dumps(source)  # an ARN written with Fn::Sub or Fn::Join names its service
    if text is not None and (found := _ARN_SERVICE.search(text)):
        return found[1] if found[1] in _READABLE else _SERVICES.get(found[1], found[1])
    if mapping.kind is None and mapping.props.get("StartingPosition") == "AT_TIMESTAMP":
        return "kinesis"
    return mapping.kind or "dynamodb"


def _resource(ref: object, resources: dict[str, Any]) -> dict[str, Any]:
    """The template resource ``!Ref X`` or ``!GetAtt X.Attr`` names; {} if none."""
    resource = resources.get(_logical_id(ref) or "")
    return resource if isinstance(resource, dict) else {}


# --- writing ------------------------------------------------------------------------------------


def _processor(
    mapping: _Mapping, kind: str, name: str, handler: str | None, res: dict[str, Any]
) -> list[str]:
    props = mapping.props
    lines = [f"  - name: {_scalar(name)}  # FunctionName, or --name; the checkpoint namespace"]
    lines.append(f"    # from {mapping.label}")
    if handler:  # the function's Handler setting (app.orders.handler) moves as it is
        lines.append(f"    handler: {_scalar(handler)}")
    else:
        lines.append(
            f"    handler: {PLACEHOLDER_HANDLER}  # CHANGE_ME: the function's Handler setting"
        )
    source_lines, unsupported = _source(props["EventSourceArn"], kind, res)
    lines += source_lines + _settings(props)
    failure = (props.get("DestinationConfig") or {}).get("OnFailure") or {}
    if isinstance(failure, dict) and "Destination" in failure:
        value, how = _value(failure["Destination"])
        lines += ["    destination_config:", "      on_failure:", f"        destination: {value}"]
        lines[-1] += f"  # DestinationConfig.OnFailure.Destination{how}"
    lines += _filters(props.get("FilterCriteria"), kind)
    extra = unsupported | {k: v for k, v in props.items() if k not in _SETTINGS and k not in _READ}
    for outer, inner in (("DestinationConfig", "OnFailure"), ("FilterCriteria", "Filters")):
        if isinstance(part := props.get(outer), dict):  # e.g. OnSuccess, or an intrinsic
            extra |= {f"{outer}.{k}": v for k, v in part.items() if k != inner}
    if extra:
        lines.append("    # Not carried over (shardwise has no such setting):")
        lines += [f"    #   {k}: {json.dumps(v, default=str)}" for k, v in extra.items()]
    return lines


def _settings(props: dict[str, Any]) -> list[str]:
    """The ESM parameters copied as they are (``_SETTINGS``), and ``Enabled``."""
    lines = []
    if "StartingPosition" not in props:
        lines.append("    starting_position: TRIM_HORIZON  # CHANGE_ME: StartingPosition not given")
    windows = props.get("TumblingWindowInSeconds") not in (None, 0)
    for esm_key, key in _SETTINGS.items():
        if esm_key in props:
            value, how = _value(props[esm_key])
            if esm_key == "StartingPositionTimestamp":
                value, how = _timestamp(props[esm_key])
            flag = ""
            if esm_key == "ParallelizationFactor" and windows and props[esm_key] != 1:
                value, flag = "1", f" was {value} -- {_ONE_LANE_FOR_WINDOWS}"
            lines.append(f"    {key}: {value}  # {esm_key}{how}{flag}")
    if "Enabled" in props:
        lines.append(f"    enabled: {_value(props['Enabled'])[0]}  # Enabled")
    elif isinstance(state := props.get("State"), str):
        enabled = "false" if state in ("Disabled", "Disabling") else "true"
        lines.append(f"    enabled: {enabled}  # State: {state}")
    return lines


def _source(
    source: object, kind: str, resources: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """The ``source:`` lines, and what of ``EventSourceArn`` is not carried over (by name)."""
    if kind == "kinesis":
        return _kinesis_source(source, resources)
    return _dynamodb_source(source, resources), {}


def _dynamodb_source(source: object, resources: dict[str, Any]) -> list[str]:
    key, (text, how) = "stream_arn", _value(source)
    if isinstance(source, dict) and "Fn::GetAtt" in source:
        table_props = resources.get(_logical_id(source) or "", {}).get("Properties") or {}
        if isinstance(table := table_props.get("TableName"), str):
            key, text = "table", _scalar(table)
            how = f": !GetAtt {_logical_id(source)}.StreamArn, the table's latest stream"
    elif isinstance(source, str) and "/stream/" not in source:
        key = "table"  # a table ARN: shardwise reads the table's latest stream
    return ["    source:", "      dynamodb:", f"        {key}: {text}  # EventSourceArn{how}"]


def _kinesis_source(source: object, resources: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The ``source: kinesis:`` lines, and the enhanced fan-out consumer that is not carried
    over when ``source`` names one (shardwise reads its stream with GetRecords instead)."""
    stream, consumer = source, None
    if isinstance(source, str) and (found := _CONSUMER.fullmatch(source)):
        stream, consumer = found["stream"], found["name"]
    elif isinstance(source, dict) and "Fn::GetAtt" in source:
        resource = _resource(source, resources)
        if resource.get("Type") == "AWS::Kinesis::StreamConsumer":
            props = resource.get("Properties") or {}
            stream = props.get("StreamARN", {"Fn::GetAtt": [_logical_id(source), "StreamARN"]})
            consumer = props.get("ConsumerName", _logical_id(source))
    key, text, how = _kinesis_stream(stream, resources)
    if consumer is not None:
        how += (
            f" -- was enhanced fan-out consumer {_value(consumer)[0]}: shardwise reads the"
            " stream with GetRecords (shared throughput)"
        )
    lines = [
        "    source:",
        "      kinesis:",
        f"        {key}: {text}  # EventSourceArn{how}",
        "        # invoke_identity_arn: ROLE_ARN  # each record's invokeIdentityArn (Lambda: the"
        " function's execution role)",
    ]
    return lines, {} if consumer is None else {_FAN_OUT: source}


def _kinesis_stream(stream: object, resources: dict[str, Any]) -> tuple[str, str, str]:
    """(key, YAML value, comment) naming a Kinesis stream: by its name when the template
    gives it (``!GetAtt S.Arn`` of a stream with a ``Name``), else by its ARN."""
    if isinstance(stream, dict) and "Fn::GetAtt" in stream:
        resource = _resource(stream, resources)
        name = (resource.get("Properties") or {}).get("Name")
        if resource.get("Type") == "AWS::Kinesis::Stream" and isinstance(name, str):
            how = f": !GetAtt {_logical_id(stream)}.Arn, the stream's Name (in aws.region)"
            return "stream_name", _scalar(name), how
    text, how = _value(stream)
    return "stream_arn", text, how


def _timestamp(value: object) -> tuple[str, str]:
    """StartingPositionTimestamp as ISO 8601 UTC (epoch seconds in the ESM API and templates),
    and the value it was, when it changed; an intrinsic or anything else is left as it is."""
    moment = None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(value, UTC)
        elif isinstance(value, str):
            moment = datetime.fromtimestamp(float(value), UTC)
    except ValueError:
        try:  # the AWS CLI prints timestamps as ISO 8601 (cli_timestamp_format)
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            pass
    except (OverflowError, OSError):
        pass
    if moment is None or moment.tzinfo is None:
        return _value(value)
    text = moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return _scalar(text), "" if text == value else f": {_scalar(value)}"


def _filters(criteria: object, kind: str) -> list[str]:
    """FilterCriteria, each pattern checked: rejected ones flagged, and for DynamoDB the
    compiler's notes (they describe DynamoDB records' shape, not a Kinesis record's)."""
    filters = criteria.get("Filters") if isinstance(criteria, dict) else None
    if not isinstance(filters, list) or not filters:
        return []
    lines = ["    filter_criteria:  # FilterCriteria", "      filters:"]
    for index, entry in enumerate(filters):
        pattern = entry.get("Pattern") if isinstance(entry, dict) else entry
        if isinstance(pattern, dict) and not _is_intrinsic(pattern):
            pattern = json.dumps(pattern)  # written as YAML rather than as a JSON string
        if isinstance(pattern, str):
            try:
                found = compile_filters([pattern]).notes  # FilterPatternError if rejected
                notes = [f"{n.message} (at {n.position})" for n in found if kind == "dynamodb"]
            except FilterPatternError as exc:
                where = f" at {exc.position}" if exc.position else ""
                notes = [f"Lambda and shardwise reject this pattern{where}: {exc.reason}"]
            lines += [f"        # {note}" for note in notes]
        value, how = _value(pattern)
        lines.append(f"        - pattern: {value}  # Filters[{index}].Pattern{how}")
    return lines


def _is_intrinsic(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and str(*value).startswith(("Ref", "Fn::"))


def _value(value: object) -> tuple[str, str]:
    """``value`` as YAML, and (``: from !Ref X -- set X ...``) how, if not literally given."""
    if isinstance(value, dict) and _is_intrinsic(value):
        text, written = _resolve(value)
        names = ", ".join(re.findall(r"(?<!\$)\$\{([A-Za-z_]\w*)\}", text))
        return _scalar(text), f": from {written} -- set {names}, or write the value in"
    if isinstance(value, list):
        items = [_value(item) for item in value]
        return "[" + ", ".join(text for text, _ in items) + "]", "".join(how for _, how in items)
    if isinstance(value, str):  # shardwise expands ${...} in strings: keep a literal one literal
        return _scalar(value.replace("${", "$${")), ""
    return (json.dumps(value), "") if isinstance(value, dict) else (_scalar(value), "")


def _resolve(intrinsic: dict[str, Any]) -> tuple[str, str]:
    """A CloudFormation intrinsic as ``${ENV_VAR}`` placeholders, and as it was written."""
    function, argument = next(iter(intrinsic.items()))
    if function == "Fn::GetAtt":
        parts = argument if isinstance(argument, list) else str(argument).split(".", 1)
        return f"${{{_env(*parts)}}}", f"!GetAtt {'.'.join(map(str, parts))}"
    if function == "Fn::Sub":
        template = str(argument[0] if isinstance(argument, list) else argument)
        return re.sub(r"\$\{(!?)([^}]*)\}", _sub_variable, template), f"!Sub {template}"
    if function in ("Ref", "Fn::ImportValue") and isinstance(argument, str):
        return f"${{{_env(argument)}}}", f"!{function.removeprefix('Fn::')} {argument}"
    return "${CHANGE_ME}", f"{function} (not resolved here)"


def _sub_variable(found: re.Match[str]) -> str:
    """``${!Literal}`` stays literal (``$${`` in shardwise); ``${Name.Attr}`` becomes a variable."""
    return f"$${{{found[2]}}}" if found[1] else f"${{{_env(found[2])}}}"


def _env(*parts: object) -> str:
    """An environment variable name: ``OrdersTable.StreamArn`` -> ``ORDERS_TABLE_STREAM_ARN``."""
    words = "_".join(re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(part)) for part in parts)
    return re.sub(r"[^A-Za-z0-9]+", "_", words).strip("_").upper() or "CHANGE_ME"


def _scalar(value: object) -> str:
    """``value`` as a YAML scalar that reads back as itself: plain when that is safe."""
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    text = str(value)
    if not text.isprintable():  # newlines, tabs, control characters: only "..." can hold them
        return json.dumps(text)
    try:
        if yaml.safe_load(f"k: {text}") == {"k": text}:
            return text
    except yaml.YAMLError:
        pass
    return "'" + text.replace("'", "''") + "'"


# --- the command --------------------------------------------------------------------------------


def add_import_esm_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``shardwise import-esm FILE [--name N] [--handler H]``."""
    command = subparsers.add_parser("import-esm", help="an event source mapping as processors:")
    command.add_argument("file", help="get-event-source-mapping JSON or a template; - for stdin")
    command.add_argument("--name", help="processor name (default: the function's name)")
    command.add_argument(
        "--handler",
        help="the function's Handler setting, e.g. app.orders.handler, or module:function "
        "(default: a CHANGE_ME placeholder)",
    )
    command.set_defaults(func=_cmd_import_esm)


def _cmd_import_esm(args: argparse.Namespace) -> int:
    """Exit 0 with the YAML on stdout; 2 if the input cannot be read or imported."""
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
        output = esm_to_processor_yaml(text, name=args.name, handler=args.handler)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except EsmImportError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    sys.stdout.write(output)
    return EXIT_OK
