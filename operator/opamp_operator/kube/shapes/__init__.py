"""Pure shapes of our resources: names, labels, CR status, config status, Pod refs, Events.

No I/O and no clock; every other kube sub-package builds on these.
"""
