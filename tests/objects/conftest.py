"""The object-tier fixtures (`s3`, `object_url`, `object_daemons`) live in tests/conftest.py:
the end-to-end tests use them too."""
