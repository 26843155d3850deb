"""The fault suite (issue 13): kill -9 of the daemon mid-write, clients killed mid-put/mid-get,
hostile frames, a full disk and a too-small /dev/shm, each against real processes and files.

Every scenario lives in one module here (`daemon_kills`, `client_kills`, `frame_fuzz`,
`disk_full`) as a function returning a report; the tests in this package run them with small
counts and assert on the report, and `bench/faults.py` runs the same functions with the issue's
counts and prints the reports as FIGURE lines.
"""
