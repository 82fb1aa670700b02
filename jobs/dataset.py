"""Ray job: `ray job submit --working-dir . -- python -m jobs.dataset --config jobs/configs/demo.yaml`."""

import sys

from themis.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("dataset"))
