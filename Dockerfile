# payrouter service image.
# Build:  docker build -t payrouter .
# Run:    docker compose up -d      (payrouter + Redis with AOF, see docker-compose.yml and the README)
#         docker run --rm payrouter --help
#         docker run --rm -p 8402:8402 payrouter dev --host 0.0.0.0   (the sandbox: anvil, test model, router)
#         docker run --rm payrouter demo
# Dependencies are installed from requirements.lock (scripts/lock regenerates it), so builds are reproducible.

# anvil (the sandbox's chain) comes from npm, at the versions of contracts/package-lock.json
FROM node:20-bookworm-slim AS node-tools
WORKDIR /tools
COPY contracts/package.json contracts/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, in their own layer (code changes do not reinstall them): exactly the lock.
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY payrouter ./payrouter
COPY pricing ./pricing
COPY wallets ./wallets
COPY contracts/artifacts ./contracts/artifacts
COPY examples ./examples
# editable: the sandbox (payrouter dev, demo) finds examples/ and contracts/node_modules under /app
RUN pip install --no-cache-dir --no-deps -e . && pip check
COPY --from=node-tools /tools/node_modules ./contracts/node_modules

RUN useradd --create-home --uid 10001 payrouter
USER payrouter
EXPOSE 8402
# /healthz answers 503 when the store or the chain is degraded (urllib raises on it)
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8402/healthz', timeout=4)"]
ENTRYPOINT ["payrouter"]
CMD ["serve", "--config", "examples/payrouter.docker.toml"]
