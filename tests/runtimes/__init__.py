"""Runtime processors: functions in other processes, through the Lambda Runtime API."""

from pathlib import Path

FUNCTIONS = Path(__file__).resolve().parent / "functions"
REPO = FUNCTIONS.parents[2]
# The Node.js example (examples/node) installs AWS's aws-lambda-ric (make node-functions); the
# test functions in FUNCTIONS / "node" run through that same client.
NODE_EXAMPLE = REPO / "examples" / "node"
NODE_RIC = NODE_EXAMPLE / "node_modules" / "aws-lambda-ric" / "index.mjs"
