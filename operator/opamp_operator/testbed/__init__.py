"""A local control plane (etcd + kube-apiserver) and PostgreSQL on loopback.

Used by the test suite and by `opamp-operator dev`, the embedded default run.
"""
