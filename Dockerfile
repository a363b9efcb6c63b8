# The guard CLI, its drift monitor (`guard monitor`), `guard serve` (the serve extra) and
# Ray for `guard reindex run --ray` (the ray extra; the compose file's ray-head and
# ray-worker), see docker-compose.yml.
# llama-cpp-python is built from source in a builder stage, with portable CPU flags:
# a -march=native build made on one host dies with SIGILL on another CPU.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF"
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[serve,ray]"

FROM python:3.11-slim
# libgomp1: llama.cpp's CPU kernels use OpenMP.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
# GUARD_HOME is a volume: create it owned by the unprivileged user, so that a fresh
# named volume starts with that ownership.
RUN useradd --system --uid 10001 --home-dir /var/lib/guard --create-home guard
USER guard
ENV GUARD_HOME=/var/lib/guard
EXPOSE 9108
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=3)"]
CMD ["guard", "--log-format", "json", "-v", "monitor", "--config", "/etc/guard/guard.toml"]
