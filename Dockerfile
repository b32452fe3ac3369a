# lrtune image: the library, its CLI and (later) the API and workers.
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 LRTUNE_TORCH_THREADS=1
COPY constraints.txt pyproject.toml README.md ./
COPY lrtune lrtune
COPY api api
COPY workers workers
COPY examples examples
# torch first, pinned by the constraints file, then lrtune with the PostgreSQL driver.
RUN pip install -c constraints.txt torch==2.13.0 \
 && pip install -c constraints.txt '.[postgres]'
ENTRYPOINT ["lrtune"]
CMD ["list"]
