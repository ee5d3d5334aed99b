"""``EndpointSigner`` signs exactly as botocore's ``SigV4Auth`` does.

Each example signs one request with both, at the same instant with the same credentials,
and requires identical headers: a difference would be a request AWS refuses (or, worse,
one only some endpoints refuse). The requests are the ones the raw source makes
(``POST`` of a JSON body with an ``X-Amz-Target``), to endpoints with and without ports,
paths, IPv6 hosts, temporary credentials, and clocks across day boundaries.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from unittest import mock

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from shardwise.sources.sigv4 import CONTENT_TYPE, EndpointSigner

OPERATIONS = ("GetRecords", "GetShardIterator", "DescribeStream", "ListStreams")
ENDPOINTS = (
    "https://streams.dynamodb.us-east-1.amazonaws.com/",
    "https://streams.dynamodb.eu-west-1.amazonaws.com:443/",
    "http://127.0.0.1:8000/",
    "http://localhost/",
    "http://[::1]:4566/",
    "https://proxy.internal:8443/dynamodb/streams/",
    "https://proxy.internal/a/./b/../c/",
    "https://proxy.internal/with space/~tilde/",
)


def botocore_headers(
    credentials: ReadOnlyCredentials, url: str, region: str, target: str, body: bytes, at: datetime
) -> dict[str, str]:
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": CONTENT_TYPE, "X-Amz-Target": target},
    )
    with mock.patch("botocore.auth.get_current_datetime", return_value=at.replace(tzinfo=None)):
        SigV4Auth(credentials, "dynamodb", region).add_auth(request)
    return dict(request.headers.items())


credentials_st = st.builds(
    ReadOnlyCredentials,
    access_key=st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", min_size=16, max_size=20),
    secret_key=st.text(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/", min_size=40, max_size=40
    ),
    token=st.none() | st.text("abcdefABCDEF0123456789+/=", min_size=1, max_size=400),
)
# hypothesis takes naive bounds; ``timezones`` makes the generated instants UTC-aware.
instants = st.datetimes(
    min_value=datetime(2020, 1, 1),  # noqa: DTZ001
    max_value=datetime(2035, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
).map(lambda at: at.replace(microsecond=0))


@settings(max_examples=300, deadline=None)
@given(
    credentials=credentials_st,
    url=st.sampled_from(ENDPOINTS),
    region=st.sampled_from(("us-east-1", "eu-central-1", "ap-southeast-2", "cn-north-1")),
    operation=st.sampled_from(OPERATIONS),
    body=st.binary(max_size=2048),
    at=instants,
)
def test_headers_are_botocores(
    credentials: ReadOnlyCredentials,
    url: str,
    region: str,
    operation: str,
    body: bytes,
    at: datetime,
) -> None:
    target = f"DynamoDBStreams_20120810.{operation}"
    expected = botocore_headers(credentials, url, region, target, body, at)
    signer = EndpointSigner(url, region=region, service="dynamodb")
    assert signer.headers(credentials, target, body, now=at) == expected


def test_the_cached_key_follows_the_day_and_the_secret() -> None:
    """The signing key is derived once per day and secret: across midnight, and after
    credentials rotate, the signatures still match botocore's."""
    url = "https://streams.dynamodb.us-east-1.amazonaws.com/"
    target = "DynamoDBStreams_20120810.GetRecords"
    signer = EndpointSigner(url, region="us-east-1", service="dynamodb")
    first = ReadOnlyCredentials("AKIDFIRST", "secret-one", None)
    rotated = ReadOnlyCredentials("AKIDSECOND", "secret-two", "session-token")
    midnight = datetime(2026, 11, 23, 23, 59, 59, tzinfo=UTC)
    for credentials, at in (
        (first, midnight),
        (first, midnight + timedelta(seconds=1)),
        (rotated, midnight + timedelta(seconds=1)),
        (first, midnight + timedelta(days=1)),
    ):
        expected = botocore_headers(credentials, url, "us-east-1", target, b"{}", at)
        assert signer.headers(credentials, target, b"{}", now=at) == expected


def test_repr_names_the_endpoint_not_the_key() -> None:
    signer = EndpointSigner("http://127.0.0.1:8000/", region="us-east-1", service="dynamodb")
    signer.headers(ReadOnlyCredentials("AKID", "very-secret", None), "t", b"")
    assert "very-secret" not in repr(signer)
    assert "127.0.0.1:8000" in repr(signer)
