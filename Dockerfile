FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY producer producer
COPY worker worker
COPY gateway gateway
COPY sandbox sandbox
COPY waq waq
RUN pip install --no-cache-dir . && useradd --create-home waq
USER waq
CMD ["waq", "--help"]
