"""One-call acceptance run of tuner on a GPU machine (and its CPU smoke version).

    bash scripts/gpu_check.sh [--out DIR] [--device cuda|cpu] [--quick]

`__main__` runs each step of `steps` in its own process with its own time cap, records a
failed or timed-out step instead of stopping, and writes DIR/summary.json and
DIR/summary.md (`report`). `independent` is the plain-PyTorch yardstick loop that
`benchmarks/fidelity.py` shares. See docs/benchmarks.md, "GPU acceptance run".
"""
