# syntax=docker/dockerfile:1
# A Node.js Lambda function run by shardwise through the Lambda Runtime API (README "Any
# runtime"): `docker build -f deploy/functions/node.Dockerfile -t orders-node .` from a
# directory holding functions/orders/ (package.json with aws-lambda-ric, package-lock.json,
# index.js) and built FROM the shardwise image (see the Dockerfile at the repository root).
#
# The config names the function as
#   runtime:
#     command: ["node", "node_modules/aws-lambda-ric/index.mjs", "index.handler"]
#     working_directory: /app/functions/orders

# --- the function's node_modules: aws-lambda-ric compiles a native addon (and its curl and
# aws-lambda-cpp), so it is built where the compilers are, then copied ------------------------
FROM node:22-bookworm AS function
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake autoconf automake libtool \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /function
COPY functions/orders/package.json functions/orders/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY functions/orders/ ./

# --- shardwise with Node.js: the node binary is self-contained (glibc, as the shardwise image's
# Debian bookworm), so one COPY adds the runtime ---------------------------------------------
FROM shardwise:0.1.0
COPY --from=node:22-bookworm-slim /usr/local/bin/node /usr/local/bin/node
COPY --from=function /function /app/functions/orders
