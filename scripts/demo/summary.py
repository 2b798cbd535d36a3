"""Prints the dev frontend's job records (from `dev-frontend show`) as a short summary."""
import json
import sys

for job in json.load(sys.stdin):
    line = f"\njob {job['queue']}/{job['id']}: {job['state']}"
    if job.get("errorMessage"):
        line += f" - {job['errorMessage']}"
    print(line)
    for entry in job["logEntries"]:
        print(f"  [{entry['key']}] exit {entry.get('exitCode')} in {entry.get('durationMs')} ms")
        for out in entry["out"].splitlines()[-6:]:
            print(f"      {out}")
