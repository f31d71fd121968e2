#!/bin/sh
# Entry point of Dockerfile.train.
#   docker run IMAGE --data /data --out /runs/NAME ...   trains under torchrun: one process per GPU (NPROC=auto),
#                                                        or NPROC processes (NPROC=1 on a CPU-only box)
#   docker run IMAGE skin-export ...                     runs any other command as it is
#   docker run IMAGE                                     prints skin-train --help
set -eu
case "${1:-}" in
    "" | -h | --help) exec python -m training --help ;;
    -*) exec torchrun --standalone --nnodes=1 --nproc_per_node="${NPROC:-auto}" -m training "$@" ;;
    *) exec "$@" ;;
esac
