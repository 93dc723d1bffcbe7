# The GPU benchmark sweep: ./build_and_run.sh builds this image and runs it with --gpus all.
#
# Base: torch 2.14.1's PyPI wheel is built for CUDA 13.0 (+cu130) and brings its CUDA user
# libraries (cuBLAS, cuDNN, NCCL, ...) as nvidia-* wheels, and onnxruntime-gpu 1.31 is built
# for the same CUDA 13 / cuDNN 9 wheels. So the image needs no CUDA toolkit or cuDNN of its
# own (a -cudnn-runtime base would ship them twice, ~3 GB): the small CUDA 13.0 "base" flavour
# is enough. It still beats a plain Ubuntu image because it carries NVIDIA_REQUIRE_CUDA=cuda>=13.0
# (a host driver too old for CUDA 13 is refused at `docker run`, with the reason) and the
# NVIDIA_* settings the container toolkit reads. Ubuntu 24.04's Python is 3.12 (>= 3.11).
ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Unpinned apt packages: Ubuntu replaces old versions in its archive, so pins break builds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && mkdir -m 1777 /results /cache
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# Dependencies from pyproject.toml alone, in their own layer: a code change does not
# download torch again. The `gpu` extra is onnxruntime-gpu; nvidia-ml-py is a main dependency.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY . .
# Editable: the sweep runs tests/test_benchmarks.py and reads benchmarks_baseline/ from /app.
RUN pip install --no-deps -e .

# build_and_run.sh runs the container as the calling user (results owned by them), who has
# no passwd entry here: HOME must be writable by anyone, and USER set for getpass (Inductor).
ENV HOME=/tmp \
    USER=densenet \
    DENSENET_OPT_CACHE=/cache \
    TORCH_HOME=/cache/torch \
    MPLBACKEND=Agg

ENTRYPOINT ["python", "-m", "densenet_opt"]
CMD ["sweep-gpus", "--device", "cuda", "--output-dir", "/results"]
