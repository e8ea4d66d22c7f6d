# payrouter service image.
# Build: docker build -t payrouter .
# Run:   docker run --rm payrouter --help
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, in their own layer, so code changes do not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p payrouter pricing wallets contracts/artifacts \
    && touch payrouter/__init__.py pricing/__init__.py wallets/__init__.py \
    && pip install --no-cache-dir . \
    && pip uninstall -y payrouter

COPY payrouter ./payrouter
COPY pricing ./pricing
COPY wallets ./wallets
COPY contracts/artifacts ./contracts/artifacts
COPY examples ./examples
RUN pip install --no-cache-dir --no-deps . && rm -rf build

RUN useradd --create-home --uid 10001 payrouter
USER payrouter
ENTRYPOINT ["payrouter"]
CMD ["--help"]
