FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY workshaper ./workshaper
RUN pip install --no-cache-dir ".[dashboard]"
USER nobody
ENTRYPOINT ["workshaper-worker"]
