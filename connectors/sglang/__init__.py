"""tierd's SGLang HiCache storage backend (SGLang 0.5.23). Load it with

    --hicache-storage-backend dynamic --hicache-storage-backend-extra-config
        '{"backend_name": "tierd", "module_path": "connectors.sglang.backend",
          "class_name": "TierdHiCacheStorage", "interface_v1": 1, "socket": "/tmp/tierd.sock"}'

Importing this package imports nothing from SGLang; `connectors.sglang.backend` does.
"""
