"""
All tests of nano-EchoJEPA, CPU only, under a minute on 2 cores.

    python test_all.py            # every test; last line "N passed, M failed"
    python test_all.py mask ema   # only tests whose name contains one of the words
    pytest test_all.py            # pytest collects the same test_* functions

Each test is a plain function with bare asserts, so pytest is not a dependency.
"""
import os
import sys
import time
import tempfile
import traceback

import numpy as np
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
HERE = os.path.dirname(os.path.abspath(__file__))

# -----------------------------------------------------------------------------
# runner

if __name__ == "__main__":
    words = sys.argv[1:]
    tests = [(n, f) for n, f in list(globals().items())
             if n.startswith("test_") and callable(f) and (not words or any(w in n for w in words))]
    passed = failed = 0
    t_start = time.time()
    for name, fn in tests:
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"ok    {name} ({time.time() - t0:.1f}s)", flush=True)
        except Exception:
            failed += 1
            traceback.print_exc()
            print(f"FAIL  {name} ({time.time() - t0:.1f}s)", flush=True)
    print(f"total {time.time() - t_start:.1f}s")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not tests else 0)
