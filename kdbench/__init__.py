"""kdbench: a reproducibility benchmark for knowledge distillation.

A suite file expands into runs; each run trains one student with one method under one regime and writes one
result record; the report turns all records into tables.
"""

__version__ = "0.1.0"
