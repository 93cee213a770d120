# Sourced by the GPU-lease scripts: unbuffered output, the project on PYTHONPATH, and the wheels the
# device image lacks (benchmarks/gpu_prepare.sh puts them in .whl/) installed into /tmp/stp-site.
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/stp-site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/stp-site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
