"""Distillation methods, one file each. Every module here is imported by ``kdbench.method.discover_methods``;
a file that registers a :class:`kdbench.method.Method` with ``@register_method`` is a new method."""
