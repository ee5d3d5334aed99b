"""The embedded DynamoDB: moto's server on a local port and the ``Orders`` table, streamed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from boto3.session import Session

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer
    from mypy_boto3_dynamodb.service_resource import Table

__all__ = ["REGION", "TABLE", "create_orders_table", "endpoint", "new_moto_server"]

TABLE = "Orders"
REGION = "us-east-1"


def new_moto_server() -> ThreadedMotoServer:
    """moto's server for a free port on 127.0.0.1, not yet started; ImportError without moto."""
    from moto.server import ThreadedMotoServer

    return ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)


def endpoint(server: ThreadedMotoServer) -> str:
    """The endpoint URL of a started ``server``."""
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def create_orders_table(endpoint_url: str) -> Table:
    """The ``Orders`` table (hash key ``order_id``) with a NEW_AND_OLD_IMAGES stream."""
    session = Session(region_name=REGION)
    client = session.client("dynamodb", endpoint_url=endpoint_url)
    # moto keeps its tables per process, not per server: a second demo in one process
    # would find the first one's table.
    if TABLE in client.list_tables()["TableNames"]:
        client.delete_table(TableName=TABLE)
    client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "order_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "order_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    return session.resource("dynamodb", endpoint_url=endpoint_url).Table(TABLE)
