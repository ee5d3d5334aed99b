"""Every client shardwise opens sends to the host botocore would choose, unless told otherwise:
the raw GetRecords path and the aiobotocore clients always agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import botocore.session
import pytest

from shardwise.aws import aws_client_config, aws_session, endpoint_override, resolve_endpoint
from shardwise.config import AwsConfig, Settings, parse_config
from shardwise.destinations._aws import aws_client
from shardwise.sources.dynamodb_raw import open_raw_client


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No endpoint settings but the test's own; files of the test's own."""
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB_STREAMS",
        "AWS_ENDPOINT_URL_SQS",
        "AWS_USE_FIPS_ENDPOINT",
        "AWS_USE_DUALSTACK_ENDPOINT",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    yield


def botocores_answer(service: str, region: str, profile: str | None = None) -> str:
    session = botocore.session.Session(profile=profile)
    client = session.create_client(service, region_name=region)
    url: str = client.meta.endpoint_url
    client.close()
    return url


async def aiobotocores_answer(aws: AwsConfig, service: str, region: str) -> str:
    """What the supervisor's aiobotocore clients are built with."""
    async with aws_session(aws).create_client(
        service,
        region_name=region,
        endpoint_url=endpoint_override(aws, service),
        config=aws_client_config(),
    ) as client:
        url: str = client.meta.endpoint_url
        return url


async def raw_answer(aws: AwsConfig) -> str:
    client = await open_raw_client(aws)
    try:
        return client.endpoint_url.rstrip("/")
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("region", "env", "expected"),
    [
        ("us-east-1", {}, "https://streams.dynamodb.us-east-1.amazonaws.com"),
        ("cn-north-1", {}, "https://streams.dynamodb.cn-north-1.amazonaws.com.cn"),
        ("us-gov-west-1", {}, "https://streams.dynamodb.us-gov-west-1.amazonaws.com"),
        (
            "us-east-1",
            {"AWS_USE_FIPS_ENDPOINT": "true"},
            "https://streams.dynamodb-fips.us-east-1.amazonaws.com",
        ),
        (
            "us-east-1",
            {"AWS_USE_DUALSTACK_ENDPOINT": "true"},
            "https://streams.dynamodb.us-east-1.api.aws",
        ),
        ("us-east-1", {"AWS_ENDPOINT_URL": "http://localhost:4566"}, "http://localhost:4566"),
        (
            "eu-west-1",
            {"AWS_ENDPOINT_URL_DYNAMODB_STREAMS": "https://vpce-1.streams.example:8443"},
            "https://vpce-1.streams.example:8443",
        ),
    ],
)
async def test_raw_and_aiobotocore_follow_botocore(
    monkeypatch: pytest.MonkeyPatch, region: str, env: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    aws = AwsConfig(region=region)
    assert botocores_answer("dynamodbstreams", region) == expected
    assert await raw_answer(aws) == expected
    assert await aiobotocores_answer(aws, "dynamodbstreams", region) == expected


async def test_fips_in_the_profile(tmp_path: Path) -> None:
    (tmp_path / "config").write_text("[profile fips]\nuse_fips_endpoint = true\n")
    aws = AwsConfig(region="us-west-2", profile="fips")
    expected = "https://streams.dynamodb-fips.us-west-2.amazonaws.com"
    assert botocores_answer("dynamodbstreams", "us-west-2", profile="fips") == expected
    assert await raw_answer(aws) == expected


async def test_the_profiles_services_section(tmp_path: Path) -> None:
    (tmp_path / "config").write_text(
        "[profile vpc]\nservices = private\n\n"
        "[services private]\ndynamodb_streams =\n  endpoint_url = https://streams.internal:9000\n"
    )
    aws = AwsConfig(region="us-east-1", profile="vpc")
    assert await raw_answer(aws) == "https://streams.internal:9000"
    assert await aiobotocores_answer(aws, "dynamodbstreams", "us-east-1") == (
        "https://streams.internal:9000"
    )


async def test_configured_endpoints_win_per_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", "https://from-env:1")
    aws = AwsConfig.model_validate(
        {
            "region": "us-east-1",
            "endpoint_url": "http://emulator:4566",
            "endpoints": {"dynamodbstreams": "https://vpce-streams:443"},
        }
    )
    assert resolve_endpoint(aws, "dynamodbstreams", "us-east-1") == "https://vpce-streams:443"
    assert await raw_answer(aws) == "https://vpce-streams:443"
    # Services without an endpoint of their own take the one-switch endpoint_url.
    assert await aiobotocores_answer(aws, "dynamodb", "us-east-1") == "http://emulator:4566"


def settings_with(aws_yaml: str) -> Settings:
    return parse_config(
        f"""
aws:
{aws_yaml}
processors:
  - name: p
    source: {{dynamodb: {{table: Orders}}}}
    handler: app:handler
    starting_position: TRIM_HORIZON
""",
        env={},
    )


async def test_a_streams_endpoint_does_not_move_the_destinations() -> None:
    """A VPC endpoint for DynamoDB Streams must not send on-failure records to that host."""
    settings = settings_with(
        "  region: eu-west-1\n  endpoints: {dynamodbstreams: 'https://vpce-streams:443'}"
    )
    async with aws_client("sqs", settings) as sqs:
        assert sqs.meta.endpoint_url == botocores_answer("sqs", "eu-west-1")
    async with aws_client("s3", settings) as s3:
        assert s3.meta.endpoint_url == botocores_answer("s3", "eu-west-1")
    settings = settings_with("  region: eu-west-1\n  endpoints: {sqs: 'https://vpce-sqs:443'}")
    async with aws_client("sqs", settings) as sqs:
        assert sqs.meta.endpoint_url == "https://vpce-sqs:443"


def test_a_misspelled_service_is_named() -> None:
    with pytest.raises(Exception, match=r"aws\.endpoints: unknown key 'dynamodb_streams'"):
        settings_with("  endpoints: {dynamodb_streams: 'https://x:1'}")
