"""kdbench: a reproducibility benchmark for knowledge distillation.

A suite file expands into runs; each run trains one student with one method under one regime and writes one
result record; the report turns all records into tables.
"""

import os as _os

# kdbench never downloads at run time: Hugging Face's hub (timm's pretrained weights) reads this when first imported
_os.environ.setdefault("HF_HUB_OFFLINE", "1")

__version__ = "0.1.0"
