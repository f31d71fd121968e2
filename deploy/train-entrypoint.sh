#!/bin/sh
# Entry point of Dockerfile.train.
#   docker run IMAGE --data /data --out /runs/NAME ...   trains: one process per visible GPU (NPROC=auto; one
#                                                        on a CPU-only box), or NPROC processes; more than one
#                                                        run under torchrun
#   docker run IMAGE skin-export ...                     runs any other command as it is
#   docker run IMAGE                                     prints skin-train --help
set -eu
case "${1:-}" in
    "" | -h | --help) exec python -m training --help ;;
    -*)
        nproc="${NPROC:-auto}"
        if [ "$nproc" = auto ]; then  # torchrun's auto would start one process per core without a GPU
            nproc=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
        fi
        if [ "$nproc" = 1 ]; then
            # No torchrun for one process: skin-train's own line and exit status (2 bad input, 130 / 143
            # stopped) reach docker, not torchrun's traceback and 1.
            exec python -m training "$@"
        fi
        exec torchrun --standalone --nnodes=1 --nproc_per_node="$nproc" -m training "$@" ;;
    *) exec "$@" ;;
esac
