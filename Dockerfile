# softipu on a slim Python with the CPU build of PyTorch; `docker run` runs `make demo`.
#   docker build -t softipu .
#   docker run --rm -v "$PWD/reports:/softipu/reports" softipu      # the demo; reports land in ./reports
#   docker run --rm softipu .venv/bin/softipu info                     # the command line
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SOFTIPU_PROGRESS=0

# make runs the demo target; nothing else is needed from Debian.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /softipu

# The CPU build of torch first (PyPI's default build is CUDA, several GB); it satisfies the
# torch==2.13.0 pin of the [torch] extra below.
RUN python -m venv .venv \
    && .venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY src ./src
# The Makefile's venv target would install the [dev] extra; the image has what the demo needs and
# marks the venv as made.
RUN .venv/bin/pip install --no-deps -e . \
    && .venv/bin/pip install "numpy>=1.26" "scipy>=1.11" "rich>=13" \
    && touch .venv/.stamp

COPY Makefile ./
COPY examples ./examples
RUN touch .venv/.stamp

CMD ["make", "demo"]
