"""Stand-in for a model server: starts a worker process and does some work in each."""

import subprocess
import sys

print("app: serving", flush=True)
subprocess.run([sys.executable, "-c", "print('worker: done')"], check=True)
