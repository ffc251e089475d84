"""The federation's public-key infrastructure: CA, SuperLink certificate, site keys.

``commands`` issues them (``fedlora pki ...``); ``layout`` names the files of a PKI folder;
``x509`` builds certificates; ``sites`` makes the sites' node and secure-aggregation keys;
``secagg_roster`` signs and verifies the CA-signed roster of the latter; ``inventory`` checks
what a folder holds and what expires.
"""
