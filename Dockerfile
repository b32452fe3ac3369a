# lrtune image: the library, its CLI, the HTTP API (`lrtune serve`) and the worker.
#
# torch comes from TORCH_INDEX_URL: PyTorch's CPU index by default (a small image, for the API,
# the migration and CPU workers). A GPU worker image needs the CUDA build:
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t lrtune-worker-cuda .
# (PyPI's Linux x86_64 torch wheel is the CUDA one), or PyTorch's index for your CUDA version,
# e.g. https://download.pytorch.org/whl/cu126. docker-compose.yml builds its workers that way.
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 LRTUNE_TORCH_THREADS=1
COPY constraints.txt pyproject.toml README.md ./
COPY lrtune lrtune
COPY api api
COPY workers workers
COPY examples examples
# torch first, pinned by the constraints file, then lrtune with the PostgreSQL driver.
RUN pip install --index-url "$TORCH_INDEX_URL" -c constraints.txt torch==2.13.0 \
 && pip install -c constraints.txt '.[postgres]'
EXPOSE 8000
ENTRYPOINT ["lrtune"]
CMD ["list"]
