# mmdet's runtime plus the import that registers this project's modules (one place for it: mmengine
# forbids the same key in two bases of one config).
_base_ = 'mmdet::_base_/default_runtime.py'

custom_imports = dict(imports=['projects.acouplenet'], allow_failed_imports=False)
