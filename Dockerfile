# medseg3d in a container: the package, its bundles and `medseg3d` as the entrypoint; no weights inside.
# docs/deploy.md ("Containers") has the commands; in short:
#
#   CPU (default):  docker build -t medseg3d:cpu .
#   CUDA:           docker build -t medseg3d:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   No registry:    deploy/container/debian_base.sh (a Debian base from Debian's packages), the torch wheel in
#                   deploy/container/wheelhouse/, then podman build --build-arg BASE_IMAGE=localhost/medseg3d-base:bookworm
#                   --build-arg TORCH_INDEX_URL= .
#   Run:            docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/data" medseg3d:cpu infer ...
#
# Two stages: `build` makes a virtual environment (pip, compilers' leftovers and caches stay there); `runtime` is
# the base with python3 and that environment copied in. The base must be Debian or Ubuntu (apt) with a Python
# that torch has wheels for (bookworm: 3.11; Ubuntu 24.04: 3.12).

ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
# torch first, from TORCH_INDEX_URL (PyTorch's CPU index by default: the CPU build, ~0.75 GB, not PyPI's CUDA
# build) and from any wheel in deploy/container/wheelhouse/; an empty TORCH_INDEX_URL means PyPI and the wheelhouse.
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/medseg3d/venv PATH=/opt/medseg3d/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"
COPY deploy/container/wheelhouse/ /tmp/wheelhouse/
# A site whose network inspects TLS passes its CA bundle as a build secret (--secret id=pip_cert,src=FILE); it is
# mounted for these two steps only and never lands in a layer.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --find-links /tmp/wheelhouse ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
# the package with its export extra (OpenVINO, ONNX Runtime: `medseg3d infer --model`, docs/export.md): its
# requirements from PyPI (torch already satisfies its range, so it stays the build above)
COPY setup.cfg pyproject.toml README.md /src/
COPY medseg3d /src/medseg3d
COPY data_prep /src/data_prep
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --find-links /tmp/wheelhouse "/src[export]" \
    && python -c "import torch, medseg3d; print('torch', torch.__version__, 'medseg3d', medseg3d.__version__)"

FROM ${BASE_IMAGE} AS runtime
# UID: the user the image runs as (no root); `--user "$(id -u):$(id -g)"` runs it as anyone else
ARG UID=1000
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && (getent passwd "$UID" >/dev/null || useradd --create-home --uid "$UID" --user-group medseg3d) \
    && mkdir -p /data && chown "$UID" /data
COPY --from=build /opt/medseg3d/venv /opt/medseg3d/venv
COPY bundles /opt/medseg3d/bundles
LABEL org.opencontainers.image.title="medseg3d" \
      org.opencontainers.image.description="3D and 2.5D medical image segmentation on MONAI (no weights inside)" \
      org.opencontainers.image.licenses="Apache-2.0"
# MEDSEG3D_BUNDLES: `--bundle brats_mri_resunet_3d` finds /opt/medseg3d/bundles/brats_mri_resunet_3d.
# MPLCONFIGDIR: matplotlib's cache where any user may write (an arbitrary --user has no home).
ENV PATH=/opt/medseg3d/venv/bin:$PATH \
    MEDSEG3D_BUNDLES=/opt/medseg3d/bundles \
    MPLCONFIGDIR=/tmp/matplotlib \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER ${UID}
WORKDIR /data
ENTRYPOINT ["medseg3d"]
CMD ["--help"]
