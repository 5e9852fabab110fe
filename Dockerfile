# The autoPET grand-challenge algorithm container (docs/challenge.md):
#   reads /input/images/{ct,pet}/<uuid>.mha, writes /output/images/automated-petct-lesion-segmentation/<uuid>.mha
#
#   docker build -t h2aseg-autopet .                                             # CPU torch, demo checkpoint
#   docker build -t h2aseg-autopet --build-arg CHECKPOINT=runs/autopet/checkpoints/best.pt \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .    # CUDA torch wheels
#
# BASE_IMAGE must provide `python` (>= 3.11) with pip; CHECKPOINT is a path inside the build context.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG CHECKPOINT=src/h2aseg/assets/demo_checkpoint.pt

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# grand-challenge runs the container as a non-root user without network access
RUN groupadd -r algorithm && useradd -m --no-log-init -r -g algorithm algorithm \
    && mkdir -p /opt/algorithm /input /output \
    && chown algorithm:algorithm /opt/algorithm /input /output

# torch first, from the chosen index (CPU by default), so that the package's own install keeps it
RUN python -m pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

WORKDIR /tmp/h2aseg-src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install . && rm -rf /tmp/h2aseg-src

COPY --chown=algorithm:algorithm ${CHECKPOINT} /opt/algorithm/checkpoint.pt

USER algorithm
WORKDIR /opt/algorithm
# extra arguments to `docker run IMAGE ...` are appended (e.g. --device cuda, --tta)
ENTRYPOINT ["h2aseg", "predict", "--checkpoint", "/opt/algorithm/checkpoint.pt", "--challenge-io", "/input", "/output"]
