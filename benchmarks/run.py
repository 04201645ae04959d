"""Same as `python -m fusedlr.bench`: the throughput benchmark (see fusedlr/bench.py)."""

from fusedlr.bench import main

if __name__ == "__main__":
    main()
