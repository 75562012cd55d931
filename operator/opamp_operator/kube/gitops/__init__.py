"""GitOps: remote config declared in OpAMPAgent / OpAMPAgentConfig resources, for the fleet."""
