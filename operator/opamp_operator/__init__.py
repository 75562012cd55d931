"""opamp-operator: an OpAMP server inside a Kopf operator, mirroring agents into OpAMPAgent CRs."""

__version__ = "0.1.0"
