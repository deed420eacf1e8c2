# One image for every pinflow part: `pinflow server`, `scheduler`, `worker`, `db upgrade`.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends git bubblewrap \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY pinflow ./pinflow
COPY dagstore ./dagstore
COPY scheduler ./scheduler
COPY runner ./runner
RUN pip install --no-cache-dir . \
    && useradd --create-home --uid 10001 pinflow \
    && mkdir -p /data \
    && chown pinflow /data

USER pinflow
ENV PINFLOW_HOME=/data
EXPOSE 8740
ENTRYPOINT ["pinflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "8740"]
