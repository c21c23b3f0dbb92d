# zpay API and worker image. Build: docker build -t zpay .
FROM python:3.11-slim
WORKDIR /app
RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md ./
COPY src ./src
COPY chains ./chains
RUN pip install --no-cache-dir .
ENV ZPAY_HOST=0.0.0.0 ZPAY_PORT=8000 ZPAY_DATA_DIR=/var/lib/zpay
EXPOSE 8000
CMD ["zpay", "serve"]
