"""L1 network building blocks: backbones (encoders) and heads.

Importing :mod:`selfsup.nn.backbones` registers every built-in backbone (registry kind
``"backbone"``); build one with :func:`selfsup.nn.backbones.create_backbone`.
"""
