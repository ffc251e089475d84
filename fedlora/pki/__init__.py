"""The federation's public-key infrastructure: CA, SuperLink certificate, site keys.

``commands`` issues them (``fedlora pki ...``); ``layout`` names the files of a PKI folder;
``x509`` builds certificates; ``inventory`` checks what a folder holds and what expires.
"""
