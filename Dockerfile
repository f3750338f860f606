# Cordon: python -m bot serve in a small, non-root image.
#   docker build -t cordon .
#   docker run --env-file .env -p 3000:3000 cordon
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY bot ./bot
COPY playbooks ./playbooks
COPY handlers ./handlers
# The versions CI tested (requirements.lock as constraints). The product only: the
# sandbox/ package (moto, the seeded local AWS, the fake Slack) is not copied.
RUN python -m venv /opt/cordon \
    && /opt/cordon/bin/pip install --no-cache-dir --upgrade pip \
    && /opt/cordon/bin/pip install --no-cache-dir -c requirements.lock .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/cordon cordon
COPY --from=build /opt/cordon /opt/cordon
ENV PATH=/opt/cordon/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PORT=3000 \
    CORDON_DATABASE_URL=sqlite:////var/lib/cordon/cordon.db
USER cordon
WORKDIR /var/lib/cordon
EXPOSE 3000
# /healthz answers 200 while the database does (HTTP and Socket Mode alike).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '3000') + '/healthz', timeout=4)"]
CMD ["python", "-m", "bot", "serve", "--host", "0.0.0.0"]
