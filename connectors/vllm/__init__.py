"""tierd's vLLM KV connector. Load it with

    --kv-transfer-config '{"kv_connector": "TierdConnector",
                           "kv_connector_module_path": "connectors.vllm.connector",
                           "kv_role": "kv_both", "kv_connector_extra_config": {...}}'
"""
